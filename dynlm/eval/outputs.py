"""The files an evaluation writes: results.json, per_article.csv, token_losses.npz (and .csv for a text file)."""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from torch import Tensor


def _json_safe(v: Any) -> Any:
    """NaN / inf become strings ("nan", "inf"): results.json stays strict JSON."""
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    if isinstance(v, dict):
        return {k: _json_safe(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_json_safe(x) for x in v]
    return v


def write_results(path: Path, results: Mapping[str, Any]) -> Path:
    path.write_text(json.dumps(_json_safe(dict(results)), indent=2, allow_nan=False) + "\n", encoding="utf-8")
    return path


def write_article_csv(path: Path, rows: Sequence[dict], methods: Sequence[str]) -> Path:
    cols = ["index", "title", "tokens", "words"]
    for m in methods:
        cols += [f"{m}_nll", f"{m}_loss", f"{m}_ppl"]
    with open(path, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(cols)
        for r in rows:
            line = [r["index"], r["title"], r["tokens"], r["words"]]
            for m in methods:
                line += [repr(r[m]["nll"]), repr(r[m]["loss"]), repr(r[m]["ppl"])]
            w.writerow(line)
    return path


def write_token_losses(path: Path, losses: Mapping[str, Tensor], token_id: Tensor, article_id: Tensor,
                       position: Tensor, article_starts: Tensor, titles: Sequence[str]) -> Path:
    """One float32 array per method (NLL of every token, nats) plus what locates every token."""
    arrays = {m: t.float().numpy() for m, t in losses.items()}
    np.savez_compressed(
        path,
        methods=np.array(list(losses), dtype=str),
        token_id=token_id.numpy().astype(np.int64),
        article_id=article_id.numpy().astype(np.int64),
        position=position.numpy().astype(np.int64),
        article_starts=article_starts.numpy().astype(np.int64),
        titles=np.array(list(titles), dtype=str),
        **arrays,
    )
    return path


def write_token_csv(path: Path, tokens: Sequence[str], losses: Mapping[str, Tensor], article_id: Tensor,
                    position: Tensor) -> Path:
    """One row per token: its index, article, position in the article, text, and NLL (nats) per method."""
    methods = list(losses)
    columns = zip(range(len(tokens)), article_id.tolist(), position.tolist(), tokens,
                  *(losses[m].double().tolist() for m in methods))
    with open(path, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(["index", "article", "position", "token"] + methods)
        for index, article, pos, tok, *values in columns:
            w.writerow([index, article, pos, tok] + [repr(v) for v in values])
    return path


__all__ = ["write_article_csv", "write_results", "write_token_csv", "write_token_losses"]
