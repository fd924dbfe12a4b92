"""Training entry point: `train(cfg, run_dir)` dispatches on `cfg.stage`."""
from __future__ import annotations

from pathlib import Path
from typing import Dict

from omegaconf import DictConfig

from .. import dist


def train(cfg: DictConfig, run_dir: str | Path) -> Dict[str, float]:
    """Launched by torchrun, joins the process group first (backend: `trainer.dist_backend`, default nccl
    with GPUs, gloo without) and leaves it at the end; every rank uses rank 0's run folder."""
    if cfg.stage not in ("lm", "meta"):
        raise ValueError(f"unknown stage {cfg.stage!r}: use stage=lm (static LM) or stage=meta (meta-learner)")
    backend = cfg.trainer.get("dist_backend") or ("gloo" if str(cfg.trainer.device) == "cpu" else None)
    created = dist.init_distributed(backend)
    try:
        run_dir = Path(dist.broadcast_object(str(run_dir)))
        if cfg.stage == "lm":
            from .lm_trainer import train_lm

            return train_lm(cfg, run_dir)
        from ..dynamic.meta_trainer import train_meta

        return train_meta(cfg, run_dir)
    finally:
        if created:
            dist.destroy()
