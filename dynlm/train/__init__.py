"""Training entry point: `train(cfg, run_dir)` dispatches on `cfg.stage`."""
from __future__ import annotations

from pathlib import Path
from typing import Dict

from omegaconf import DictConfig


def train(cfg: DictConfig, run_dir: str | Path) -> Dict[str, float]:
    if cfg.stage == "lm":
        from .lm_trainer import train_lm

        return train_lm(cfg, run_dir)
    if cfg.stage == "meta":
        from ..dynamic.meta_trainer import train_meta

        return train_meta(cfg, run_dir)
    raise ValueError(f"unknown stage {cfg.stage!r}: use stage=lm (static LM) or stage=meta (meta-learner)")
