"""The run folder's append-only logs (`metrics.jsonl`, `valid_article.jsonl`): read them the way a kill may have
left them, and cut them back to a checkpoint's step on resume so that replayed steps are not recorded twice."""
from __future__ import annotations

import json
from pathlib import Path
from typing import List, Tuple

from ..cache import write_atomic


def read_jsonl(path: Path) -> Tuple[List[dict], int]:
    """`(records, lines skipped)`: a line a kill tore (not valid JSON) is skipped, not fatal."""
    records, torn = [], 0
    if not path.is_file():
        return records, torn
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            torn += 1
    return records, torn


def ends_torn(path: Path) -> bool:
    """True when the file's last line has no newline (a write was cut): the next record needs one first."""
    if not path.is_file() or path.stat().st_size == 0:
        return False
    with open(path, "rb") as f:
        f.seek(-1, 2)
        return f.read(1) != b"\n"


def cut_after_step(path: Path, step: int) -> Tuple[int, int]:
    """Keep the records of steps up to `step` (a resumed checkpoint's); drop later ones and torn lines.
    Returns `(records dropped, torn lines dropped)`. Rewritten atomically: a kill leaves the old file or the new."""
    records, torn = read_jsonl(path)
    kept = [r for r in records if int(r.get("step", 0)) <= step]
    if len(kept) == len(records) and not torn:
        return 0, 0
    write_atomic(path, "".join(json.dumps(r) + "\n" for r in kept).encode("utf-8"))
    return len(records) - len(kept), torn


__all__ = ["cut_after_step", "ends_torn", "read_jsonl"]
