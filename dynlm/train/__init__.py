"""Training entry point: `train(cfg, run_dir)` dispatches on `cfg.stage`."""
from __future__ import annotations

from pathlib import Path
from typing import Dict

from omegaconf import DictConfig

from .. import dist
from ..config import ConfigValueError
from .lm_trainer import train_lm
from .meta_trainer import train_meta


def train(cfg: DictConfig, run_dir: str | Path) -> Dict[str, float]:
    """Launched by torchrun, joins the process group first (backend: `trainer.dist_backend`, default nccl
    with GPUs, gloo without) and leaves it at the end; every rank uses rank 0's run folder."""
    if cfg.stage not in ("lm", "meta"):
        raise ConfigValueError(f"unknown stage {cfg.stage!r}: use stage=lm (static LM) or stage=meta (meta-learner)")
    backend = cfg.trainer.get("dist_backend") or ("gloo" if str(cfg.trainer.device) == "cpu" else None)
    created = dist.init_distributed(backend)
    try:
        run_dir = Path(dist.broadcast_object(str(run_dir)))
        return (train_lm if cfg.stage == "lm" else train_meta)(cfg, run_dir)
    finally:
        if created:
            dist.destroy()


__all__ = ["train", "train_lm", "train_meta"]
