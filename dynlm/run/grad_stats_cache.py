"""A disk cache for the gradient statistics measured on a stage-1 checkpoint (by stage 2 or by evaluation).

A stage-1 checkpoint carries no statistics, so every `evaluate.py ... methods=[static,dyneval]` and every
stage 2 started from it would spend minutes measuring them again on the same tokens. The measurement is
deterministic (eval mode, the same streams), so its result is keyed by everything it depends on: the
checkpoint's sha256, the measured split's sha256, the dynamic parameter names, the token budget, the number of
streams and the segment length.
Files live in `<data.cache_dir, $DYNLM_CACHE or ~/.cache/dynlm>/grad_stats/`; the checkpoint itself is never written.
"""
from __future__ import annotations

import hashlib
import io
import logging
from pathlib import Path
from typing import Optional, Sequence

import torch

from ..cache import cache_root, write_atomic
from ..dynamic.grad_stats import GradStats

log = logging.getLogger(__name__)
CACHE_VERSION = 3  # bump when measure_grad_stats changes what it returns (2: Krause's batch-mean gradients,
# 3: the matrices' input moments)


def cache_path(cache_dir: Optional[str], ckpt_sha256: str, split_sha256: str, names: Sequence[str],
               tokens: Optional[int], streams: int, seg_len: int) -> Path:
    key = "|".join([ckpt_sha256, split_sha256, ",".join(names), "all" if tokens is None else str(tokens), str(streams),
                    str(seg_len), f"v{CACHE_VERSION}"])
    digest = hashlib.sha256(key.encode()).hexdigest()[:20]
    return cache_root(cache_dir) / "grad_stats" / f"{digest}.pt"


def load_cached(path: Path, names: Sequence[str], device) -> Optional[GradStats]:
    """The cached statistics, or None when absent or unreadable (a damaged file is measured again)."""
    if not path.is_file():
        return None
    try:
        stats = GradStats.from_state_dict(torch.load(path, map_location="cpu", weights_only=True), device)
        stats.check_covers(names)
        return stats
    except Exception as e:  # noqa: BLE001 - any damage means "measure again", never a failed evaluation
        log.warning("ignoring the unreadable gradient-statistics cache %s: %s", path, e)
        return None


def save_cached(path: Path, stats: GradStats) -> bool:
    buffer = io.BytesIO()
    torch.save(stats.state_dict(), buffer)
    try:
        write_atomic(path, buffer.getvalue())
        return True
    except OSError as e:
        log.warning("could not cache the gradient statistics in %s: %s", path, e)
        return False


__all__ = ["cache_path", "load_cached", "save_cached"]
