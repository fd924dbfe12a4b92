"""What every run does before its loop: device, seeds, run folder, resolved config, resume path."""
from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import torch
from omegaconf import DictConfig, OmegaConf

from .. import dist
from ..config import DynlmError
from .checkpoint import restore_rng


def select_device(name: str) -> torch.device:
    """The device a run computes on (`auto`: this rank's GPU where there is one, else the CPU)."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        return torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError(f"trainer.device={name} but CUDA is not available here: use trainer.device=cpu or auto")
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


class NoCheckpointError(DynlmError, FileNotFoundError):
    """trainer.resume=true in a folder without last.pt."""


class DeviceError(DynlmError, RuntimeError):
    """trainer.device names a device this machine does not have."""


class RunFolderError(DynlmError, ValueError):
    """A run folder that already holds another run."""


class UnwritableRunFolderError(DynlmError, OSError):
    """A run folder (or its checkpoints/) that is a file, or that this process may not write."""


def _writable_dir(path: Path) -> bool:
    return path.is_dir() and os.access(path, os.W_OK | os.X_OK)


def unwritable(run_dir: Path) -> Optional[str]:
    """Why a run could not write its folder or checkpoints (None when it can)."""
    run_dir = Path(run_dir)
    ckpts = run_dir / "checkpoints"
    if run_dir.exists() and not run_dir.is_dir():
        return f"the run folder {run_dir} is a file"
    if ckpts.exists() and not ckpts.is_dir():
        return f"{ckpts} is a file, where the run writes its checkpoints"
    for folder in (ckpts, run_dir):
        if folder.is_dir() and not _writable_dir(folder):
            return f"{folder} is not writable"
    if run_dir.is_dir():
        return None
    parent = next(p for p in run_dir.absolute().parents if p.exists())  # the root always exists
    if not _writable_dir(parent):
        what = "not writable" if parent.is_dir() else "a file"
        return f"the run folder {run_dir} cannot be created: {parent} is {what}"
    return None


def check_writable(run_dir: Path) -> None:
    """Before any work: the run folder and its checkpoints/ can be written (else the first checkpoint, maybe hours
    in, would fail). Rank 0 decides for every rank."""
    problem = dist.broadcast_object(unwritable(run_dir) if dist.is_main() else None)
    if problem:
        raise UnwritableRunFolderError(f"{problem}: make it a writable folder, or write the run to another folder "
                                       "(hydra.run.dir=...)")


OWNER_FILE = ".torchrun_id"  # the torchrun job that owns the folder: its restarts may resume or start over


def _owned_by_this_job(run_dir: Path) -> bool:
    job = os.environ.get("TORCHELASTIC_RUN_ID")
    owner = run_dir / OWNER_FILE
    return bool(job) and owner.is_file() and owner.read_text(encoding="utf-8").strip() == job


def mark_owner(run_dir: Path) -> None:
    """Rank 0 records the torchrun job that runs in this folder, so that only its own restarts resume here."""
    job = os.environ.get("TORCHELASTIC_RUN_ID")
    if job and dist.is_main() and dist.restart_count() == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / OWNER_FILE).write_text(job, encoding="utf-8")


LOG_FILE = "train.log"  # the run's messages (`dist.log_file`)


def held_files(run_dir: Path) -> List[Path]:
    """What makes a folder hold a run: checkpoints, or non-empty logs."""
    ckpts = run_dir / "checkpoints"
    held = sorted(ckpts.glob("*.pt")) if ckpts.is_dir() else []
    return held + [p for p in (run_dir / "metrics.jsonl", run_dir / "valid_article.jsonl")
                   if p.is_file() and p.stat().st_size]


def check_run_dir(run_dir: Path, overwrite: bool, keep: Sequence[Path] = ()) -> List[Path]:
    """A new run (not a resume) may not write over a folder that holds a run: its checkpoints and logs would mix
    with the new ones and its best.pt be replaced by a worse model. Returns the files `clear_run_dir` deletes
    (with `overwrite`); raises without it, or when one of them is `keep` (an input of this run). Rank 0 decides
    for every rank. A restart of the torchrun job that owns the folder starts over: only its logs go."""
    held = held_files(run_dir) if dist.is_main() else None
    held = dist.broadcast_object(held)
    if not held:
        return []
    if dist.restart_count() > 0 and dist.broadcast_object(_owned_by_this_job(run_dir) if dist.is_main() else None):
        return [p for p in held if p.suffix == ".jsonl"]  # the failed attempt's records, from before any checkpoint
    names = ", ".join(str(p.relative_to(run_dir)) for p in held)
    if not overwrite and logs_only(held):
        raise RunFolderError(
            f"the run folder {run_dir} holds the logs of a run stopped before its first checkpoint ({names}): there "
            "is nothing to resume. Start it again with trainer.overwrite=true, or start a new run in a fresh folder "
            "(hydra.run.dir=...)."
        )
    if not overwrite:
        raise RunFolderError(
            f"the run folder {run_dir} already holds a run ({names}). Continue it with trainer.resume=true, start "
            "a new run in a fresh folder (hydra.run.dir=...), or replace it with trainer.overwrite=true."
        )
    inputs = {Path(k).resolve() for k in keep}
    if any(p.resolve() in inputs for p in held):
        raise RunFolderError(f"trainer.overwrite=true would delete {names} from {run_dir}, and this run reads one of "
                             "them (meta.lm_checkpoint): write the new run to another folder (hydra.run.dir=...).")
    return held + [p for p in [run_dir / LOG_FILE] if p.is_file()]


def logs_only(held: Sequence[Path]) -> bool:
    """`held_files` of a run stopped before its first checkpoint: logs of steps that a restart replays."""
    return bool(held) and all(p.suffix == ".jsonl" for p in held)


def clear_run_dir(run_dir: Path, files: Sequence[Path]) -> None:
    """Rank 0 deletes what `check_run_dir` returned; every rank waits for it."""
    if files and dist.is_main():
        for p in files:
            p.unlink(missing_ok=True)
        dist.print0(f"removed the previous run's {len(files)} file(s) from {run_dir} (trainer.overwrite=true, or a "
                    "restart before the first checkpoint)")
    dist.barrier()


def resume_path(resume: Any, run_dir: Path) -> Optional[Path]:
    """`trainer.resume`: false, true (this run folder's last.pt) or a checkpoint path. None: start from step 0.

    A job restarted by torchrun (TORCHELASTIC_RESTART_COUNT > 0) continues from this run folder's last.pt
    when there is one and the folder is its own (`mark_owner`), whatever `trainer.resume` says: the run folder
    must be fixed (`hydra.run.dir=...`). trainer.resume=true in a folder holding only the logs of a run stopped
    before its first checkpoint starts that run over, as a restart does: None, and the caller replaces its logs.
    """
    last = run_dir / "checkpoints" / "last.pt"
    if dist.restart_count() > 0 and _owned_by_this_job(run_dir):
        if last.is_file():
            dist.print0(f"elastic restart {dist.restart_count()}: resuming from {last}")
            return last
        dist.print0(f"elastic restart {dist.restart_count()}: no checkpoint at {last} yet, starting over "
                    "(a restart resumes only with a fixed run folder: hydra.run.dir=...)")
    if resume is None or resume is False or (isinstance(resume, str) and resume.lower() in ("false", "")):
        return None
    if not asks_resume_here(resume):
        return Path(str(resume))
    if last.is_file():
        return last
    best = run_dir / "checkpoints" / "best.pt"
    if best.is_file():  # killed (or out of disk) between the two writes of a validation
        raise NoCheckpointError(f"trainer.resume=true but {last} does not exist. {best} is there: resume from it "
                                f"with trainer.resume={best}.")
    if logs_only(held_files(run_dir)):  # the user need not know that it stopped before its first checkpoint
        dist.print0(f"trainer.resume=true: {run_dir} holds the logs of a run stopped before its first checkpoint, "
                    "nothing to resume: starting that run over from step 0 (its logs are replaced)")
        return None
    raise NoCheckpointError(
        f"trainer.resume=true but {last} does not exist. Resume into the same run folder "
        "(hydra.run.dir=<the folder of the interrupted run>) or pass trainer.resume=<path to last.pt>."
    )


def asks_resume_here(resume: Any) -> bool:
    """trainer.resume=true: resume from this run folder's last.pt."""
    return resume is True or (isinstance(resume, str) and resume.lower() == "true")

