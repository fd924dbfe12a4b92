"""What every run does before its loop: device, seeds, run folder, resolved config, resume path."""
from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Any, Dict, Optional

import torch
from omegaconf import DictConfig, OmegaConf

from .. import dist
from .checkpoint import restore_rng


def select_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        return torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"trainer.device={name} but CUDA is not available here: use trainer.device=cpu or auto")
    if device.type == "cuda" and device.index is None and dist.launched_by_torchrun():
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))  # one GPU per process
    return device


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def seed_rank(seed: int) -> None:
    """After the model is built (same on every rank): give each rank its own dropout masks.

    Rank 0 keeps the single-process random stream; rank r > 0 is reseeded with seed + r.
    """
    if dist.rank() > 0:
        seed_everything(seed + dist.rank())


def restore_rank_rng(ckpt: Dict[str, Any], seed: int, step: int) -> None:
    """Each rank's own RNG state when the checkpoint was saved by as many ranks; otherwise rank 0 takes the
    saved main state and the others are reseeded (their dropout masks change, nothing else does)."""
    per_rank = ckpt.get("rng_ranks")
    if per_rank is not None and len(per_rank) == dist.world_size():
        restore_rng(per_rank[dist.rank()])
    elif dist.rank() == 0:
        restore_rng(ckpt["rng"])
    else:
        seed_everything(seed + dist.rank() + 1_000_003 * step)


def config_dict(cfg: DictConfig) -> Dict[str, Any]:
    """The resolved config as plain JSON-able containers (stored in checkpoints and on wandb)."""
    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]


def save_resolved_config(cfg: DictConfig, run_dir: Path) -> None:
    if not dist.is_main():
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True), encoding="utf-8")
    (run_dir / "config.json").write_text(json.dumps(config_dict(cfg), indent=2), encoding="utf-8")


def resume_path(resume: Any, run_dir: Path) -> Optional[Path]:
    """`trainer.resume`: false, true (this run folder's last.pt) or a checkpoint path.

    A job restarted by torchrun (TORCHELASTIC_RESTART_COUNT > 0) continues from this run folder's last.pt
    when there is one, whatever `trainer.resume` says: the run folder must be fixed (`hydra.run.dir=...`).
    """
    last = run_dir / "checkpoints" / "last.pt"
    if dist.restart_count() > 0:
        if last.is_file():
            dist.print0(f"elastic restart {dist.restart_count()}: resuming from {last}")
            return last
        dist.print0(f"elastic restart {dist.restart_count()}: no checkpoint at {last} yet, starting over "
                    "(a restart resumes only with a fixed run folder: hydra.run.dir=...)")
    if resume is None or resume is False or (isinstance(resume, str) and resume.lower() in ("false", "")):
        return None
    if resume is True or (isinstance(resume, str) and resume.lower() == "true"):
        path = run_dir / "checkpoints" / "last.pt"
        if not path.is_file():
            raise FileNotFoundError(
                f"trainer.resume=true but {path} does not exist. Resume into the same run folder "
                "(hydra.run.dir=<the folder of the interrupted run>) or pass trainer.resume=<path to last.pt>."
            )
        return path
    return Path(str(resume))
