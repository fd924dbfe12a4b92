"""What every run does before its loop: device, seeds, run folder, resolved config, resume path."""
from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any, Dict, Optional

import torch
from omegaconf import DictConfig, OmegaConf

from .. import dist


def select_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(__import__("os").environ.get("LOCAL_RANK", 0)))
        return torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"trainer.device={name} but CUDA is not available here: use trainer.device=cpu or auto")
    return device


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


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
    """`trainer.resume`: false, true (this run folder's last.pt) or a checkpoint path."""
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
