"""Structured config schemas.

Every Hydra group is backed by one of these dataclasses, registered in the ConfigStore, so an unknown
or mistyped key fails when the config is composed, before any data is read or any model built.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING


@dataclass
class DataConfig:
    name: str = "wikitext-2"  # a label: the text comes from `dir`, else `hub_config`
    # Hugging Face `wikitext` config used when `dir` is not given.
    hub_config: str = "wikitext-2-v1"
    # Local folder with train.txt/valid.txt/test.txt or wiki.{train,valid,test}.tokens.
    dir: Optional[str] = None
    tokenizer: str = "word"  # word | sentencepiece
    vocab_size: int = 8000  # sentencepiece only
    # Where tokenizer models are cached when the data folder is not writable (default $DYNLM_CACHE or ~/.cache/dynlm).
    cache_dir: Optional[str] = None
    batch_size: int = 20  # stage 1: parallel streams of the train split
    bptt: int = 70  # stage 1: base length of a truncated-BPTT step (varied around it, as AWD-LSTM)
    # Evaluation reads the split as one stream, `eval_bptt` tokens at a time.
    eval_bptt: int = 256
    # Keep the last N train articles out of stage 1, for stage 2 to meta-train on (meta.split); 0: none.
    meta_holdout_articles: int = 0


@dataclass
class ModelConfig:
    """AWD-LSTM's WikiText-2 settings (Merity et al. 2017): the one place the model's defaults are set."""

    name: str = "awd_lstm"  # a label: the keys below set the model
    emb_size: int = 400  # embedding size, also the output size of the last LSTM layer (tied weights)
    hidden_size: int = 1150  # output size of the other LSTM layers
    num_layers: int = 3  # LSTM layers
    dropout: float = 0.4  # output (locked)
    dropouth: float = 0.2  # between LSTM layers (locked)
    dropouti: float = 0.65  # input embeddings (locked)
    dropoute: float = 0.1  # embedding rows
    wdrop: float = 0.5  # DropConnect on hidden-to-hidden weights
    alpha: float = 2.0  # AR
    beta: float = 1.0  # TAR
    init_range: float = 0.1  # embeddings start uniform in ±init_range


@dataclass
class OptimConfig:
    name: str = "ntasgd"  # ntasgd | adam
    lr: float = 30.0  # learning rate
    weight_decay: float = 1.2e-6  # L2 penalty
    # NT-ASGD: switch to averaging when valid loss has not improved on the best of the evaluations
    # more than `nonmono` evaluations ago.
    nonmono: int = 5
    betas: List[float] = field(default_factory=lambda: [0.9, 0.999])  # adam only
    # multiply the learning rate by `decay` after `decay_patience` validations in a row without a new best
    # valid loss (1.0: a constant learning rate)
    decay: float = 1.0
    decay_patience: int = 2  # consecutive validations without a new best before the learning rate decays


@dataclass
class TrainerConfig:
    max_steps: Optional[int] = None  # stop after this many training steps (null: no limit)
    max_epochs: Optional[int] = 1  # stop after this many passes over the train split (null: no limit)
    max_time: Optional[float] = None  # seconds of training (evaluation excluded)
    eval_interval: int = 1000  # steps between validations (also at the end)
    # Stage-1 validation reads the first this-many valid tokens (null: the whole split). For quick checks and
    # recipe searches; the final number to report is the whole split's (scripts/evaluate.py).
    valid_max_tokens: Optional[int] = None
    log_interval: int = 50  # steps between logged records (metrics.jsonl, wandb)
    clip: float = 0.25  # gradient-norm clipping
    seed: int = 1111  # random seed
    # false | true (continue from <run dir>/checkpoints/last.pt) | path to a checkpoint
    resume: Any = False
    # Start over in a run folder that already holds a run (its checkpoints and logs are deleted first). Without
    # it, such a folder is refused: resume it (trainer.resume=true) or choose another (hydra.run.dir=...).
    overwrite: bool = False
    progress_bar: bool = True  # a tqdm bar on the terminal
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    # Stop cleanly (keeping last.pt) after this many steps of this process: used to test resume.
    stop_after_steps: Optional[int] = None
    # torchrun runs: process-group backend, null = nccl with GPUs, gloo without.
    dist_backend: Optional[str] = None
    # Fault injection (tests of elastic restart): the last rank raises at this step on the first attempt.
    fail_at_step: Optional[int] = None


@dataclass
class LoggerConfig:
    name: str = "none"  # none | wandb
    project: str = "dynlm"  # wandb project
    entity: Optional[str] = None  # wandb team or user (null: your default)
    run_name: Optional[str] = None  # wandb run name (null: wandb picks one)
    mode: Optional[str] = None  # online | offline | disabled (default: WANDB_MODE or online)
    tags: List[str] = field(default_factory=list)  # wandb tags


@dataclass
class MetaConfig:
    """Stage 2 (`stage=meta`): training the learned update rule chosen by `rule=...` (its keys are `rule.*`)."""

    # Stage-1 checkpoint to start from; null: θ0 built fresh from `model` (joint training from scratch, which needs
    # train_static=true)
    lm_checkpoint: Optional[str] = None
    # Which parameters are dynamic (medium-term memory): fnmatch patterns over named_parameters().
    dynamic: List[str] = field(default_factory=lambda: ["layers.*"])
    seg_len: int = 5  # L: tokens per segment (one update per segment)
    window: int = 4  # K: segments per truncated meta-BPTT window
    batch_size: int = 4  # B: parallel article streams, each with its own dynamic weights
    learner_lr: float = 0.001  # Adam's learning rate on the rule's parameters φ
    clip: float = 1.0  # meta-gradient norm clipping
    train_static: bool = False  # also refine θ0 under the EWC penalty
    static_lr: float = 0.0001  # Adam's learning rate on θ0 (train_static)
    ewc: float = 0.0  # λ_EWC for Σ F_i (θ0_i − θ0*_i)²
    checkpoint_segments: bool = True  # recompute activations in the backward pass instead of storing them
    second_order: bool = False  # the full meta-gradient (through the gradients of the inner updates)
    # How the meta-gradient is estimated: bptt (truncated meta-BPTT through the window's updates) | es (antithetic
    # evolution strategies: 2·es_pairs + 1 reads of the window without a graph; memory flat in meta.window) |
    # first_order (θ0's first-order joint gradient at the cost of reading: train_static=true, a rule without φ)
    estimator: str = "bptt"
    es_sigma: float = 0.1  # σ: the scale of φ's perturbations (es)
    es_pairs: int = 1  # P: antithetic pairs of perturbations per window (es)
    # The mean squared gradients v (Krause's statistics): gradients of the mean loss of batches of
    # `gradstat_streams` streams × seg_len tokens of `split`, over at least `gradstat_tokens` tokens (null: all of
    # it, as Krause; about an hour for WikiText-2 on one CPU core, hence 200k until measured to matter).
    gradstat_tokens: Optional[int] = 200000
    gradstat_streams: int = 100  # streams (batch size) of that measurement
    # While θ0 trains (train_static): measure them again on the current θ0 every this many steps, so that they follow
    # it (from scratch, the first measurement is of a random model); null: never
    gradstat_refresh: Optional[int] = None
    gradstat_refresh_tokens: Optional[int] = None  # train tokens of each re-measurement (null: gradstat_tokens)
    # Articles stage 2 reads: train | heldout (kept out of stage 1); null: heldout if there are any, else train.
    split: Optional[str] = None
    valid_articles: int = 2  # quick adaptive validation (first N valid articles) at every eval
    valid_max_tokens: Optional[int] = None  # the quick validation reads at most this many of their tokens
    # Stop with an error after this many consecutive windows whose update was skipped (non-finite values).
    max_skipped_windows: int = 10


@dataclass
class Config:
    stage: str = "lm"  # lm | meta
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    # The update rule (`rule=NAME`, conf/rule/): stage 2 trains it; its keys are its own schema's
    # (dynlm/dynamic/registry.py).
    rule: Any = MISSING
    meta: MetaConfig = field(default_factory=MetaConfig)


class DynlmError(Exception):
    """A problem with what the user asked for (config, data, checkpoint, run folder), not a bug in dynlm: its
    message names the problem and the fix, so the scripts print it alone, without a traceback (scripts/*.py)."""


class ConfigValueError(DynlmError, ValueError):
    """A config value outside the range where it means anything (a non-finite learning rate, say)."""


# key -> (lowest, highest, whether the lowest itself is allowed[, whether the highest is]); checked before any work
# starts (a rule's own keys: its schema's `ranges`, dynlm/dynamic/registry.py)
RANGES = {
    "optim.lr": (0.0, None, False), "optim.weight_decay": (0.0, None, True), "trainer.clip": (0.0, None, True),
    "optim.decay_patience": (1, None, True), "optim.decay": (0.0, 1.0, False, True),  # decay 1: a constant rate
    "meta.learner_lr": (0.0, None, False), "meta.clip": (0.0, None, False), "meta.static_lr": (0.0, None, False),
    "meta.ewc": (0.0, None, True), "meta.seg_len": (1, None, True), "meta.window": (1, None, True),
    "meta.batch_size": (1, None, True), "meta.gradstat_streams": (1, None, True),
    "meta.gradstat_refresh": (1, None, True), "meta.gradstat_refresh_tokens": (1, None, True),
    "meta.max_skipped_windows": (1, None, True), "meta.es_sigma": (0.0, None, False), "meta.es_pairs": (1, None, True),
    "data.batch_size": (1, None, True), "data.bptt": (1, None, True),
    "trainer.valid_max_tokens": (2, None, True), "data.meta_holdout_articles": (0, None, True),
}

# Keys that were renamed, old -> new: an old command line fails with the new name instead of meaning something
# else (`meta.lr` was Krause's η, the rule's `rule.eta`; Adam's rate on φ was `meta.meta_lr`). `rule` alone: the
# group choice `rule=NAME`. Checkpoints written with the old names are read through `dynamic.rules.upgrade_config`.
RENAMED_KEYS = {
    "meta.name": "rule", "meta.lr": "rule.eta", "meta.lam": "rule.lam", "meta.eps": "rule.eps",
    "meta.update_gate_init": "rule.update_gate_init", "meta.hidden": "rule.hidden",
    "meta.tensor_emb": "rule.tensor_emb", "meta.momentum": "rule.momentum", "meta.momentum_init": "rule.momentum_init",
    "meta.meta_lr": "meta.learner_lr", "meta.meta_clip": "meta.clip", "eval.dyneval_lr": "eval.dyneval_eta",
}
RENAMED_GROUPS = {"meta": "rule"}  # `meta=NAME` chose the rule: now `rule=NAME`


def renamed_message(key: str, value: str) -> str | None:
    """What replaces an old `key=value` of the command line, or None when the key was not renamed."""
    section = key.split(".", 1)[0]
    if key in RENAMED_GROUPS and "." not in key:
        return f"{key}={value} is now {RENAMED_GROUPS[key]}={value} (the update rule is chosen with rule=NAME)"
    new = RENAMED_KEYS.get(key)
    if new is None:
        return None
    if "." not in new:
        return f"{key}={value} is now the choice {new}={value}"
    return f"{key} was renamed {new}: use {new}={value}" + (
        " (the update rule's own keys are rule.*)" if section != new.split(".", 1)[0] else "")


# Stage-2 keys that only one choice reads, with that choice: set under another, they would be silently ignored.
ONLY_WITH = {
    "meta.es_sigma": ("estimator", "es"), "meta.es_pairs": ("estimator", "es"),
    "meta.static_lr": ("train_static", True), "meta.ewc": ("train_static", True),
    "meta.gradstat_refresh": ("train_static", True),  # the statistics change only when θ0 does
    # ES reads its windows without a graph: there are no activations to recompute
    "meta.checkpoint_segments": ("estimator", "bptt"),
}


def _text(value) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def check_choice_keys(cfg) -> None:
    """A stage-2 key set away from its default where the choice that reads it is not made is an error, not a no-op
    (every config key has an effect: `meta.es_pairs=4` under `meta.estimator=bptt` would otherwise do nothing)."""
    if cfg.stage != "meta":
        return
    defaults = MetaConfig()
    for key, (choice, wanted) in ONLY_WITH.items():
        name = key.split(".")[1]
        if cfg.meta[choice] != wanted and cfg.meta[name] != getattr(defaults, name):
            made, needed = f"meta.{choice}={_text(cfg.meta[choice])}", f"meta.{choice}={_text(wanted)}"
            raise ConfigValueError(f"{key}={_text(cfg.meta[name])} has no effect with {made}: it is read only with "
                                   f"{needed}; remove it, or set {needed}")


def check_range(key: str, value, bounds) -> None:
    """`value` is finite and within `bounds` = (lowest, highest, whether the lowest is allowed[, the highest]);
    None (an optional key's "no limit") passes."""
    if value is None:
        return
    low, high, low_ok, *high_ok = bounds
    high_ok = bool(high_ok and high_ok[0])
    bad = not math.isfinite(float(value)) or value < low or (value == low and not low_ok) or (
        high is not None and (value > high or (value == high and not high_ok)))
    if bad:
        span = f"{'>=' if low_ok else '>'} {low}" + (
            f" and {'<=' if high_ok else '<'} {high}" if high is not None else "")
        raise ConfigValueError(f"{key}={value} is out of range: it must be finite and {span}")


def check_ranges(cfg) -> None:
    """Every key of `RANGES` is finite and in its range: a run with `meta.learner_lr=inf` would only skip every
    update. Stage-2 keys that the chosen estimator or θ0 refinement does not read must be left at their defaults."""
    check_choice_keys(cfg)
    for key, bounds in RANGES.items():
        section, name = key.split(".")
        check_range(key, cfg[section][name], bounds)


def register_configs() -> None:
    cs = ConfigStore.instance()
    cs.store(name="base_config", node=Config)
    cs.store(group="data", name="base_data", node=DataConfig)
    cs.store(group="model", name="base_model", node=ModelConfig)
    cs.store(group="optim", name="base_optim", node=OptimConfig)
    cs.store(group="trainer", name="base_trainer", node=TrainerConfig)
    cs.store(group="logger", name="base_logger", node=LoggerConfig)


__all__ = [
    "Config",
    "DataConfig",
    "ModelConfig",
    "OptimConfig",
    "TrainerConfig",
    "LoggerConfig",
    "MetaConfig",
    "register_configs",
    "check_choice_keys",
    "check_range",
    "renamed_message",
    "RENAMED_KEYS",
    "check_ranges",
    "ConfigValueError",
    "DynlmError",
    "MISSING",
]
