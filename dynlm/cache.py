"""The user-level cache folder shared by everything dynlm keeps between runs (tokenizer models, gradient
statistics), the atomic write they all use, and the file hash that keys them."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Optional


def cache_root(cache_dir: Optional[str] = None) -> Path:
    """`cache_dir` (data.cache_dir) if set, else $DYNLM_CACHE, else ~/.cache/dynlm (tests use a temporary one)."""
    return Path(cache_dir or os.environ.get("DYNLM_CACHE") or "~/.cache/dynlm").expanduser()


def write_atomic(path: Path, data: bytes) -> None:
    # Several ranks may write at once; each renames a complete file, readers never see half of one.
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def sha256_file(path: Path) -> str:
    """The file's sha256 (hex): what identifies a checkpoint in cache keys and reports."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
