"""Everything evaluation reads and checks before its long work: options, checkpoint, model, learner, data.

A wrong method, a missing or mismatched checkpoint, `learned` without a learned rule, or data with another
vocabulary fails here with a message that says what to do, before gradient statistics are measured or any
split is read by a model.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from .. import dist
from ..cache import sha256_file
from ..config import DataConfig, DynlmError, MetaConfig, check_range
from ..data import Corpus, Split, TextFile, hold_out, load_corpus
from ..data.sources import read_hub, read_local
from ..dynamic.fast_weights import select_dynamic
from ..dynamic.grad_stats import GradStats
from ..dynamic.rules import LEARNED, rule_config, rule_names, rule_spec
from ..model import AWDLSTM
from ..run.allocator import keep_freed_memory_on
from ..run.checkpoint import CheckpointError, load_checkpoint
from ..run.from_checkpoint import (
    check_data_matches,
    holdout_articles,
    lm_from_checkpoint,
    load_learner,
    stored_grad_stats,
)
from ..run.setup import select_device
from .aggregate import article_word_counts
from .config import EvalRunConfig
from .config import methods as all_methods
from .text_input import load_text_corpus


class EvalConfigError(DynlmError, ValueError):
    """An evaluation option that cannot work (unknown method, bad index...)."""


@dataclass
class EvalInputs:
    """A checked evaluation: model, rules and the (part of the) split to read."""

    ckpt_path: Path
    ckpt_sha256: str
    ckpt: Dict[str, Any]
    model: AWDLSTM
    device: torch.device
    data_cfg: DictConfig  # the effective data settings (checkpoint's, overridden by the eval config)
    corpus: Corpus
    split: Split
    num_articles: int  # articles evaluated (the first ones of the split)
    num_tokens: int  # tokens evaluated
    words: List[int]  # words of every evaluated article (per-word perplexity)
    methods: List[str]  # in running order; static first
    seg_len: int
    chunk: int
    names: Optional[List[str]]  # dynamic parameters (adaptive methods only)
    ckpt_meta: Optional[DictConfig]  # the checkpoint's stage-2 config (segments, statistics)
    fixed_rules: Dict[str, DictConfig]  # the config of every fixed rule evaluated (dyneval), by method name
    stats: Optional[GradStats]  # gradient statistics, when the checkpoint has them
    learner: Optional[nn.Module]  # the checkpoint's learned rule, loaded
    text: Optional[TextFile] = None  # the text file read instead of a split (text=PATH)

    @property
    def ids(self) -> torch.Tensor:
        return self.split.ids[: self.num_tokens]

    @property
    def article_starts(self) -> torch.Tensor:
        return self.split.article_starts[: self.num_articles]

    @property
    def needs_train(self) -> bool:
        return bool(self.fixed_rules) and self.stats is None


def check_options(cfg: DictConfig) -> Optional[List[str]]:
    """Every option that can be checked without the checkpoint; returns the methods asked for (None: default)."""
    methods = None if cfg.methods is None else list(cfg.methods)
    if methods is not None:
        if "meta" in methods:
            renamed = ",".join(LEARNED if m == "meta" else m for m in methods)
            raise EvalConfigError(f"methods={methods}: the method meta is now called {LEARNED} (the checkpoint's "
                                  f"learned rule): use methods=[{renamed}]")
        unknown = [m for m in methods if m not in all_methods()]
        if unknown or not methods:
            raise EvalConfigError(
                f"unknown method(s) {unknown or methods} in methods={methods}: choose among {all_methods()}, "
                f"e.g. methods=[{','.join(all_methods())}]"
            )
        if len(set(methods)) != len(methods):
            raise EvalConfigError(f"methods={methods} lists a method twice")
    if cfg.split not in ("train", "valid", "test"):
        raise EvalConfigError(f"unknown split={cfg.split!r}: use split=valid or split=test")
    if cfg.text is not None and cfg.split != EvalRunConfig.split:
        raise EvalConfigError(f"split={cfg.split} and text={cfg.text} both name what to evaluate: give one of them")
    e = cfg.eval
    for key in ("max_articles", "seg_len", "chunk", "gradstat_streams", "gradstat_tokens"):
        if e[key] is not None and e[key] < 1:
            raise EvalConfigError(f"eval.{key}={e[key]} must be >= 1 (or null)")
    for key in ("position_bins", "gain_articles", "smooth", "bar_articles", "streams"):
        if e[key] < 1:
            raise EvalConfigError(f"eval.{key}={e[key]} must be >= 1")
    if cfg.checkpoint is None:
        raise EvalConfigError("pass checkpoint=PATH (a .pt written by scripts/train.py, e.g. runs/.../best.pt)")
    return methods


def resolve_methods(methods: Optional[List[str]], has_learner: bool, path: Path, stage) -> List[str]:
    """The methods in running order. Static always runs first: it is the reference of every loss gain."""
    without_learner = [m for m in all_methods() if m != LEARNED]
    if methods is None:
        methods = all_methods() if has_learner else without_learner
    if LEARNED in methods and not has_learner:
        raise EvalConfigError(
            f"methods includes {LEARNED} but {path} is a stage-{stage or 'lm'} checkpoint without a learned rule. "
            "Train one with `python scripts/train.py stage=meta meta.lm_checkpoint=<this checkpoint> ...` and "
            f"evaluate its checkpoint, or use methods=[{','.join(without_learner)}]."
        )
    if "static" not in methods:
        dist.print0("static is evaluated too: it is the reference of every loss gain")
    return ["static"] + [m for m in all_methods()[1:] if m in methods]


def _known(d: Optional[dict], schema) -> dict:
    names = {f.name for f in fields(schema)}
    return {k: v for k, v in (d or {}).items() if k in names}


def effective_data_config(user: DictConfig, ckpt_cfg: Dict[str, Any]) -> DictConfig:
    """The checkpoint's data settings; keys the eval config sets (away from their defaults) replace them."""
    defaults = OmegaConf.structured(DataConfig)
    merged = OmegaConf.merge(defaults, _known(ckpt_cfg.get("data"), DataConfig))
    overrides = {k: user[k] for k in defaults if user[k] != defaults[k]}
    return OmegaConf.merge(merged, overrides)


def meta_settings(ckpt_cfg: Dict[str, Any], has_learner: bool) -> DictConfig:
    """The stage-2 config of a stage-2 checkpoint (its segment length and statistics travel with its learned rule);
    for a stage-1 checkpoint, which never used its meta config, today's defaults."""
    schema = OmegaConf.structured(MetaConfig)
    return OmegaConf.merge(schema, _known(ckpt_cfg.get("meta"), MetaConfig)) if has_learner else schema


def dynamic_names(model, ckpt: Dict[str, Any], patterns: Optional[List[str]], path: Path, learned: bool) -> List[str]:
    """The adapted parameters: a stage-2 checkpoint's (dyneval then adapts what its meta-learner adapts), else
    those `eval.dynamic` names (default: all of them, as Krause did). Without the learned method, `eval.dynamic`
    also chooses them on a stage-2 checkpoint: Krause's every-parameter dyneval on a θ0 trained jointly with a
    restricted adapted set."""
    stored = ckpt.get("dynamic_names")
    if stored is None:
        return select_dynamic(model, list(patterns) if patterns is not None else ["*"])
    chosen = select_dynamic(model, list(patterns)) if patterns is not None else None
    if chosen is not None and chosen != list(stored):
        if not learned:
            return chosen
        raise EvalConfigError(
            f"eval.dynamic={list(patterns)} differs from the parameters the meta-learner of {path} adapts "
            f"({list(stored)}): with the learned method dyneval adapts the same ones, so that the two compare like "
            "for like. Leave eval.dynamic unset, or leave learned out of methods (methods=[static,dyneval])."
        )
    own = dict(model.named_parameters())
    missing = [n for n in stored if n not in own]
    if missing:
        raise CheckpointError(f"checkpoint {path} names dynamic parameters {missing} the model does not have")
    return list(stored)


def fixed_rule_settings(method: str, learned_rule: Optional[Dict[str, Any]], e) -> DictConfig:
    """A fixed rule's config: its defaults (a stage-1 checkpoint), or where the checkpoint's learned rule started
    (the keys the two share: η, λ, ε, and the update directions of rule=cheap); for dyneval, the `eval.dyneval_*`
    set replace them."""
    cfg = rule_config(method, like=learned_rule)
    if method == "dyneval":
        chosen = {"eta": e.dyneval_eta, "lam": e.dyneval_lam, "eps": e.dyneval_eps,
                  "momentum_beta": e.dyneval_momentum_beta, "delta_decay": e.dyneval_delta_decay,
                  "whiten": e.dyneval_whiten, "whiten_eps": e.dyneval_whiten_eps}
        chosen = {k: v for k, v in chosen.items() if v is not None}
        ranges = rule_spec(method).config.ranges
        for key, value in chosen.items():  # here, before any long work, and named as the user wrote it
            if key in ranges:
                check_range(f"eval.dyneval_{key}", value, ranges[key])
        cfg = OmegaConf.merge(cfg, chosen)
    return cfg


def split_words(data_cfg: DictConfig, split: str) -> List[int]:
    """Words per article of the split's text (read again: the corpus keeps token ids, not lines)."""
    texts = read_local(data_cfg.dir, (split,)) if data_cfg.dir else read_hub(data_cfg.hub_config, (split,))
    text = texts[split]
    if split == "train" and data_cfg.meta_holdout_articles:  # the train split is what stage 1 read
        text = hold_out(text, data_cfg.meta_holdout_articles)[0]
    return article_word_counts(text.lines)


def load_inputs(cfg: DictConfig) -> EvalInputs:
    methods = check_options(cfg)
    e = cfg.eval
    path = Path(str(cfg.checkpoint)).expanduser()
    ckpt = load_checkpoint(path, map_location="cpu")
    if not isinstance(ckpt.get("config"), dict) or "model" not in ckpt["config"] or "model" not in ckpt:
        raise CheckpointError(f"{path} has no model config or weights: is it a dynlm training checkpoint?")
    methods = resolve_methods(methods, ckpt.get("meta_learner") is not None, path, ckpt.get("stage"))
    device = select_device(e.device)
    keep_freed_memory_on(device)
    model = lm_from_checkpoint(ckpt, path).to(device).eval()  # a config that does not match the weights fails here

    has_learner = ckpt.get("meta_learner") is not None
    ckpt_meta = meta_settings(ckpt["config"], has_learner)
    seg_len = int(e.seg_len or ckpt_meta.seg_len)
    learned_rule = ckpt["config"].get("rule") if has_learner else None
    fixed_rules = {m: fixed_rule_settings(m, learned_rule, e) for m in methods if m in rule_names(learned=False)}
    names = stats = learner = None
    if len(methods) > 1:
        names = dynamic_names(model, ckpt, e.dynamic, path, LEARNED in methods)
        stats = stored_grad_stats(ckpt, names, device)
        if LEARNED in methods:
            if stats is None:
                raise CheckpointError(f"checkpoint {path} has a learned rule but no gradient statistics (grad_stats)")
            learner = load_learner(ckpt, names, stats, path, device).eval()

    holdout_articles(cfg.data.meta_holdout_articles, ckpt, path)  # train is what stage 1 read: no other cut
    data_cfg = effective_data_config(cfg.data, ckpt["config"])
    needs_train = bool(fixed_rules) and stats is None
    text = None
    if cfg.text is not None:
        corpus, text = load_text_corpus(cfg.text, ckpt, path, data_cfg, needs_train)
        split, words = text.split, text.words
    else:
        corpus = load_corpus(data_cfg, splits=tuple(dict.fromkeys((cfg.split,) + ("train",) * needs_train)))
        check_data_matches(ckpt, corpus, path)  # another vocabulary fails here
        split, words = corpus.splits[cfg.split], split_words(data_cfg, cfg.split)
    num_articles = split.num_articles if e.max_articles is None else min(int(e.max_articles), split.num_articles)
    num_tokens = int(split.article_starts[num_articles]) if num_articles < split.num_articles else split.num_tokens
    if len(words) != split.num_articles or sum(words) != split.num_words:
        raise RuntimeError(f"word counts of {split.name} disagree with its articles ({len(words)} vs "
                           f"{split.num_articles})")
    if e.streams > num_articles:
        raise EvalConfigError(f"eval.streams={e.streams} but only {num_articles} articles are read: each stream needs "
                              "an article of its own")
    bad = [a for a in e.html_articles if not 0 <= a < num_articles]
    if bad:
        raise EvalConfigError(f"eval.html_articles={list(e.html_articles)}: {bad} not among the {num_articles} "
                              f"evaluated articles (0..{num_articles - 1})")
    expected = (ckpt.get("data_checksums") or {}).get(cfg.split) if text is None else None
    if expected is not None and expected != corpus.checksums.get(cfg.split):
        dist.print0(f"note: the {cfg.split} split at {corpus.source} differs from the one the checkpoint was "
                    "trained next to (other sha256); evaluating it anyway")
    return EvalInputs(
        ckpt_path=path.resolve(), ckpt_sha256=sha256_file(path), ckpt=ckpt, model=model, device=device,
        data_cfg=data_cfg, corpus=corpus, split=split, num_articles=num_articles, num_tokens=num_tokens,
        words=words[:num_articles], methods=methods, seg_len=seg_len,
        chunk=int(e.chunk or data_cfg.eval_bptt), names=names, ckpt_meta=ckpt_meta, fixed_rules=fixed_rules,
        stats=stats, learner=learner, text=text,
    )


__all__ = ["EvalConfigError", "EvalInputs", "effective_data_config", "load_inputs"]
