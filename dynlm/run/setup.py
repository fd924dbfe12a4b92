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


class RunFolderError(ValueError):
    """A run folder that already holds another run."""


def claim_run_dir(run_dir: Path, overwrite: bool) -> None:
    """A new run (not a resume) may not write over a folder that holds a run: its checkpoints and logs would mix
    with the new ones and its best.pt be replaced by a worse model. With `overwrite`, rank 0 deletes them first.
    A torchrun restart before the first checkpoint starts over in its own folder, which is allowed."""
    ckpts = run_dir / "checkpoints"
    held = sorted(ckpts.glob("*.pt")) if ckpts.is_dir() else []
    held += [p for p in (run_dir / "metrics.jsonl", run_dir / "valid_article.jsonl") if p.is_file() and p.stat().st_size]
    if not held or dist.restart_count() > 0:
        return
    if not overwrite:
        names = ", ".join(str(p.relative_to(run_dir)) for p in held)
        raise RunFolderError(
            f"the run folder {run_dir} already holds a run ({names}). Continue it with trainer.resume=true, start "
            "a new run in a fresh folder (hydra.run.dir=...), or replace it with trainer.overwrite=true."
        )
    if dist.is_main():
        for p in held:
            p.unlink()
        dist.print0(f"trainer.overwrite=true: removed the previous run's {len(held)} file(s) from {run_dir}")
    dist.barrier()


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
