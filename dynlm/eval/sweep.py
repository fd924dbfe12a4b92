"""One table from a Hydra sweep of evaluations (`scripts/evaluate.py -m ...`), e.g. to tune dyneval on valid."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Dict, List


def sweep_rows(sweep_dir: str | Path) -> List[Dict]:
    """One row per finished job under `sweep_dir`: its folder (named by the swept settings), the tokens read
    and each method's perplexity. Jobs without `results.json` (still running, or failed) are left out."""
    rows = []
    for results_path in sorted(Path(sweep_dir).rglob("results.json")):
        results = json.loads(results_path.read_text(encoding="utf-8"))
        rows.append({
            "job": str(results_path.parent.relative_to(sweep_dir)),
            "tokens": results["num_tokens"],
            # a diverged setting's perplexity is stored as the string "inf" or "nan" (strict JSON)
            "ppl": {method: float(m["ppl"]) for method, m in results["methods"].items()},
        })
    if not rows:
        raise FileNotFoundError(f"no results.json under {sweep_dir}: is it the folder of a finished "
                                f"`scripts/evaluate.py -m` sweep (runs/eval-sweep/<date>_<time>)?")
    return rows


def _rank(ppl: float) -> float:
    return math.inf if math.isnan(ppl) else ppl  # NaN last, like inf (NaN would break the ordering)


def format_sweep(rows: List[Dict], sort_by: str | None = None) -> str:
    """A plain-text table, best first by `sort_by`'s perplexity (default: the last method)."""
    methods = list(dict.fromkeys(m for row in rows for m in row["ppl"]))
    sort_by = sort_by or methods[-1]
    if sort_by not in methods:
        raise ValueError(f"sort_by={sort_by!r} is not a method of this sweep; choose one of {methods}")
    rows = sorted(rows, key=lambda r: _rank(r["ppl"].get(sort_by, math.inf)))
    width = max(len("job"), *(len(r["job"]) for r in rows))
    lines = [f"{'job':<{width}}  {'tokens':>8}  " + "  ".join(f"{m:>8}" for m in methods)]
    for row in rows:
        cells = "  ".join(f"{row['ppl'][m]:8.2f}" if m in row["ppl"] else f"{'-':>8}" for m in methods)
        lines.append(f"{row['job']:<{width}}  {row['tokens']:>8}  {cells}")
    return "\n".join(lines)
