"""How glibc's malloc treats the large blocks tensors live in (CPU only; a no-op where libc is not glibc).

By default a block above the mmap threshold (at most 32 MiB) is mapped fresh at every allocation and unmapped at
free, so a per-segment tensor of the size of the embedding table (26.6 MB for model=small) is paid for in page
faults and zeroed pages every segment: ~18% of all-parameter dynamic evaluation's time. `keep_freed_memory`
serves every block from the heap and keeps freed memory for the next allocation; `return_freed_memory` is the
opposite, for measuring peak memory (resident size then tracks what is live).
"""
from __future__ import annotations

import ctypes
import functools
from typing import Optional

import torch

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_MMAP_MAX = -1, -3, -4
_GLIBC_MMAP_MAX = 65536  # glibc's default number of mmapped blocks


@functools.cache
def _libc() -> Optional[ctypes.CDLL]:
    try:
        libc = ctypes.CDLL("libc.so.6")
        return libc if hasattr(libc, "mallopt") else None
    except OSError:
        return None


def keep_freed_memory() -> bool:
    """No block is mmapped and the heap is never trimmed: a freed tensor's memory serves the next one as it is.
    Resident memory stays at its peak. Returns whether glibc accepted the settings."""
    libc = _libc()
    if libc is None:
        return False
    return bool(libc.mallopt(_M_MMAP_MAX, 0)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))


def keep_freed_memory_on(device: torch.device) -> bool:
    """`keep_freed_memory` for a run computing on `device` (what training and evaluation call on their device):
    on CPU, per-segment tensors as large as the embedding table then reuse freed memory instead of being mapped
    and zeroed afresh. Returns whether it applied."""
    return device.type == "cpu" and keep_freed_memory()


def return_freed_memory() -> bool:
    """Blocks above 64 KiB mmapped and unmapped at free, the heap trimmed above 128 KiB: resident memory tracks
    the tensors alive (for peak-memory measurements). Returns whether glibc accepted the settings."""
    libc = _libc()
    if libc is None:
        return False
    return all(bool(libc.mallopt(k, v)) for k, v in
               ((_M_MMAP_MAX, _GLIBC_MMAP_MAX), (_M_MMAP_THRESHOLD, 64 * 1024), (_M_TRIM_THRESHOLD, 128 * 1024)))


def trim_freed_memory() -> None:
    """Give free heap memory back to the OS now."""
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)


__all__ = ["keep_freed_memory", "keep_freed_memory_on", "return_freed_memory", "trim_freed_memory"]
