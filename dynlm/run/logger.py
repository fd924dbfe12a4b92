"""Metrics to `metrics.jsonl` in the run folder and, optionally, to Weights & Biases.

Keys are `/`-namespaced (`train/loss`, `valid/ppl`) and every record carries an explicit step. Only the
main rank writes.
"""
from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any, Dict, Mapping, Optional

from .. import dist
from .jsonl import ends_torn


def _jsonable(v: Any) -> Any:
    if hasattr(v, "item"):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return v


class RunLogger:
    def __init__(self, run_dir: str | os.PathLike, cfg_logger, config: Mapping[str, Any]):
        self.run_dir = Path(run_dir)
        self.enabled = dist.is_main()
        self.wandb = None
        self._jsonl = None
        if not self.enabled:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        path = self.run_dir / "metrics.jsonl"
        torn = ends_torn(path)
        self._jsonl = open(path, "a", encoding="utf-8")
        if torn:  # a killed write: its half line stays alone, and readers skip it
            self._jsonl.write("\n")
        if cfg_logger.name == "wandb":
            self.wandb = _start_wandb(self.run_dir, cfg_logger, config)
        elif cfg_logger.name != "none":
            raise ValueError(f"unknown logger {cfg_logger.name!r}: use logger=none or logger=wandb")

    def log(self, metrics: Mapping[str, Any], step: int) -> None:
        if not self.enabled:
            return
        record: Dict[str, Any] = {"step": step, "time": time.time()}
        record.update({k: _jsonable(v) for k, v in metrics.items()})
        self._jsonl.write(json.dumps(record) + "\n")
        self._jsonl.flush()
        if self.wandb is not None:
            self.wandb.log(dict(metrics), step=step)

    def log_media(self, items: Mapping[str, Any], step: Optional[int] = None) -> None:
        """Rich wandb objects (tables, images, html, plots); the JSONL file keeps only scalars."""
        if self.enabled and self.wandb is not None:
            self.wandb.log(dict(items), step=step)

    def finish(self) -> None:
        if self._jsonl is not None:
            self._jsonl.close()
            self._jsonl = None
        if self.wandb is not None:
            self.wandb.finish()
            self.wandb = None


def _start_wandb(run_dir: Path, cfg_logger, config: Mapping[str, Any]):
    import wandb

    kwargs = dict(
        project=cfg_logger.project,
        entity=cfg_logger.entity,
        name=cfg_logger.run_name,
        tags=list(cfg_logger.tags) or None,
        config=dict(config),
        dir=str(run_dir),
    )
    if cfg_logger.mode:
        kwargs["mode"] = cfg_logger.mode
    try:
        return wandb.init(**kwargs)
    except Exception as e:  # noqa: BLE001 - wandb raises many types for "cannot reach the server"
        raise RuntimeError(
            f"could not start wandb ({e}). With no network, run with WANDB_MODE=offline (or logger.mode=offline) "
            "and upload later with `wandb sync <run dir>/wandb/offline-run-*`; or use logger=none."
        ) from e
