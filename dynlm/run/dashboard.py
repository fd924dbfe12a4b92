"""Curves for Weights & Biases dashboards, shared by evaluation and meta-training.

Everything goes through `RunLogger.log_media`, a no-op without `logger=wandb`; `wandb` is imported only when a
run is active. Works offline (WANDB_MODE=offline): the panels are stored in the offline run and appear once
it is synced.
"""
from __future__ import annotations

import math
from typing import Mapping, Sequence, Tuple

import torch
from torch import Tensor


def active(logger) -> bool:
    return logger is not None and getattr(logger, "wandb", None) is not None


def _series(xs: Sequence[float], curves: Mapping[str, Sequence[float]]):
    """Per-series xs and ys with non-finite points dropped (empty position bins)."""
    keys, all_x, all_y = [], [], []
    for k, ys in curves.items():
        pts = [(x, float(y)) for x, y in zip(xs, ys) if y is not None and math.isfinite(float(y))]
        if pts:
            keys.append(k)
            all_x.append([p[0] for p in pts])
            all_y.append([p[1] for p in pts])
    return keys, all_x, all_y


def line_series(xs, curves: Mapping[str, Sequence[float]], title: str, xname: str):
    import wandb

    keys, all_x, all_y = _series(xs, curves)
    return wandb.plot.line_series(xs=all_x, ys=all_y, keys=keys, title=title, xname=xname)


def chunk_means(x: Tensor, points: int) -> Tuple[Tensor, Tensor]:
    """`(start index [P], mean [P])` of `x` cut into at most `points` consecutive chunks of equal size: a long
    per-token curve brought down to a plottable number of points."""
    n = x.numel()
    size = max(1, math.ceil(n / max(points, 1)))
    starts = torch.arange(0, n, size)
    idx = torch.arange(n) // size
    sums = torch.zeros(starts.numel(), dtype=torch.float64).index_add_(0, idx, x.double())
    counts = torch.bincount(idx, minlength=starts.numel())
    return starts, sums / counts


__all__ = ["active", "chunk_means", "line_series"]
