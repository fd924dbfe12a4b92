"""Compose the real Hydra configs (conf/) the way scripts/train.py does, for tests that call train()."""
from __future__ import annotations

import json
from pathlib import Path
from typing import List, Sequence, Tuple

from hydra import compose, initialize_config_dir
from hydra.core.default_element import ConfigDefault
from hydra.core.global_hydra import GlobalHydra
from hydra.core.object_type import ObjectType
from omegaconf import DictConfig

from dynlm.config import register_configs
from dynlm.dynamic import rules  # noqa: F401 - registers the rules' config nodes (conf/rule/)
from dynlm.eval.config import register_eval_configs

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"


def compose_config(overrides: Sequence[str] = (), config_name: str = "config") -> DictConfig:
    register_configs()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name=config_name, overrides=list(overrides))


def group_options(schema_nodes: bool = False) -> List[Tuple[str, str]]:
    """Every `(group, option)` of conf/ and the ConfigStore, Hydra's own groups aside, found as Hydra finds them.
    A schema node (a ConfigStore node that its group's options extend: `base_model`) counts only with
    `schema_nodes`."""
    register_eval_configs()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        loader = GlobalHydra.instance().config_loader()
        found = [(g, o) for g in loader.get_group_options("", results_filter=ObjectType.GROUP) if g != "hydra"
                 for o in loader.get_group_options(g, results_filter=ObjectType.CONFIG)]
        # an option's plain entries (`- base_model`) name configs of its own group; group entries (`override
        # /model: small`) choose options
        extended = {(g, d.path) for g, o in found for d in loader.repository.load_config(f"{g}/{o}").defaults_list
                    if isinstance(d, ConfigDefault) and d.path is not None}
    return [(g, o) for g, o in found if schema_nodes or (g, o) not in extended]


def tiny_lm_overrides(data_dir, **extra) -> list:
    """A tiny stage-1 run: seconds on a CPU."""
    base = {
        "model": "tiny", "data.dir": str(data_dir), "data.batch_size": 4, "data.bptt": 20, "data.eval_bptt": 64,
        "trainer.max_epochs": "null", "trainer.max_steps": 12, "trainer.eval_interval": 6,
        "trainer.log_interval": 3, "trainer.progress_bar": "false", "trainer.device": "cpu", "optim.lr": 20,
    }
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


def train_tiny_lm(data_dir, run_dir, checkpoint: str = "best.pt", **extra) -> Path:
    """Train a tiny stage-1 model (`tiny_lm_overrides` + `extra`) into `run_dir`; returns its checkpoint."""
    from dynlm.train import train

    train(compose_config(tiny_lm_overrides(data_dir, **extra)), run_dir)
    return Path(run_dir) / "checkpoints" / checkpoint


def meta_overrides(data_dir, lm_checkpoint, **extra) -> list:
    """A tiny stage-2 run from `lm_checkpoint`: each test adds its sizes (streams, L, K, steps) in `extra`, where
    None leaves a key of this base out."""
    base = {
        "stage": "meta", "meta.lm_checkpoint": str(lm_checkpoint), "data.dir": str(data_dir),
        "meta.valid_articles": 1, "meta.learner_lr": 0.01, "trainer.max_epochs": "null", "trainer.log_interval": 1,
        "trainer.progress_bar": "false", "trainer.device": "cpu",
    }
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items() if v is not None]


# Joint training (issue #25): stage 2 also training θ0, with the rule in the loop, every parameter adapting, and the
# EWC penalty on. One entry (test id: overrides) per way of taking θ0's gradient: the end-to-end tests of joint runs
# (kill and resume, two ranks against one) run each.
JOINT_CASES = {
    "joint-bptt-first-order": {"rule": "cheap", "meta.train_static": "true", "meta.dynamic": "[*]",
                               "meta.ewc": 100, "meta.second_order": "false"},
    "joint-bptt-second-order": {"rule": "cheap", "meta.train_static": "true", "meta.dynamic": "[*]",
                                "meta.ewc": 100, "meta.second_order": "true"},
    # θ0 alone, with dyneval's fixed rule (nothing to learn, so no learner_lr)
    "joint-first-order-dyneval": {"rule": "dyneval", "meta.estimator": "first_order", "meta.train_static": "true",
                                  "meta.dynamic": "[*]", "meta.ewc": 100, "meta.learner_lr": None},
}


# Joint training from scratch (`meta_overrides(data, None, **SCRATCH_JOINT)`): a fresh tiny θ0 trained with dyneval's
# first-order gradient, every parameter adapting, the statistics measured again every 3 steps on 200 tokens, one
# article held out; 6 steps with checkpoints at 2, 4 and 6 (refreshes at 3 and 6)
SCRATCH_JOINT = {"meta.lm_checkpoint": None, "model": "tiny", "rule": "dyneval", "meta.estimator": "first_order",
                 "meta.train_static": "true", "meta.dynamic": "[*]", "meta.learner_lr": None, "meta.static_lr": 0.01,
                 "meta.gradstat_tokens": 400, "meta.gradstat_refresh": 3, "meta.gradstat_refresh_tokens": 200,
                 "meta.batch_size": 2, "meta.seg_len": 4, "meta.window": 2, "meta.valid_max_tokens": 200,
                 "data.meta_holdout_articles": 1, "trainer.max_steps": 6, "trainer.eval_interval": 2}


def straight_and_resumed(overrides: Sequence[str], root, stop_after: int = 4):
    """Train `overrides` straight through into root/full, and stopped after `stop_after` steps then resumed into
    root/split; returns the two last checkpoints (for tests of exact resume)."""
    from dynlm.run.checkpoint import load_checkpoint
    from dynlm.train import train

    root = Path(root)
    train(compose_config(overrides), root / "full")
    train(compose_config(list(overrides) + [f"trainer.stop_after_steps={stop_after}"]), root / "split")
    train(compose_config(list(overrides) + ["trainer.resume=true"]), root / "split")
    return tuple(load_checkpoint(root / run / "checkpoints" / "last.pt") for run in ("full", "split"))


def records(run_dir) -> list:
    """The run folder's metrics.jsonl, one dict per line."""
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
