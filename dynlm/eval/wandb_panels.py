"""Weights & Biases panels of an evaluation and of the validation article followed during meta-training.

Everything goes through `RunLogger.log_media`, a no-op without `logger=wandb`; `wandb` is imported only when a
run is active. Works offline (WANDB_MODE=offline): the panels are stored in the offline run and appear once
it is synced.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Mapping, Sequence


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


def log_evaluation(logger, results: dict, images: Mapping[str, Path], pages: Mapping[str, Path]) -> None:
    """Overall table, per-article table, loss / gain by position (line plots), PNG images, HTML pages."""
    if not active(logger):
        return
    import wandb

    split = results["split"]
    methods = list(results["methods"])
    cols = ["method", "tokens", "nll", "loss", "ppl"] + (["words", "word_ppl"] if results.get("per_word") else [])
    overall = wandb.Table(columns=cols, data=[[m] + [results["methods"][m][c] for c in cols[1:]] for m in methods])
    art_cols = ["index", "title", "tokens", "words"]
    for m in methods:
        art_cols += [f"{m}_nll", f"{m}_ppl"]
    for m in methods[1:]:
        art_cols.append(f"{m}_gain_per_token")
    rows = []
    for r in results["articles"]:
        row = [r["index"], r["title"], r["tokens"], r["words"]]
        for m in methods:
            row += [r[m]["nll"], r[m]["ppl"]]
        for m in methods[1:]:
            row.append((r["static"]["nll"] - r[m]["nll"]) / max(r["tokens"], 1))
        rows.append(row)
    pos = results["position_bins"]
    items = {
        f"eval/{split}/overall": overall,
        f"eval/{split}/articles": wandb.Table(columns=art_cols, data=rows),
        f"eval/{split}/loss_by_position": line_series(
            pos["centers"], {m: pos["loss"][m] for m in methods}, f"{split}: mean loss by relative position",
            "relative position in the article"),
    }
    if pos.get("gain"):
        items[f"eval/{split}/gain_by_position"] = line_series(
            pos["centers"], pos["gain"], f"{split}: loss gain over static by relative position",
            "relative position in the article")
    for name, path in images.items():
        items[f"eval/{split}/plots/{name}"] = wandb.Image(str(path), caption=name)
    for name, path in pages.items():
        items[f"eval/{split}/html/{name}"] = wandb.Html(Path(path).read_text(encoding="utf-8"), inject=False)
    logger.log_media(items, step=0)


def log_valid_article(logger, step: int, title: str, xs: Sequence[int], curves: Mapping[str, Sequence[float]],
                      history: Sequence[dict]) -> None:
    """Meta-training: the loss through the fixed validation article now, and meta's gain curves so far."""
    if not active(logger):
        return
    items = {
        "valid/article/loss_curve": line_series(
            xs, curves, f"valid article '{title}': loss by position (step {step})", "position in the article"),
    }
    if history:
        gains = {f"step {h['step']}": [s - m for s, m in zip(h["static"], h["meta"])] for h in history}
        items["valid/article/meta_gain_history"] = line_series(
            history[-1]["x"], gains, f"valid article '{title}': meta gain over static, by meta-training step",
            "position in the article")
    logger.log_media(items, step=step)


__all__ = ["active", "line_series", "log_evaluation", "log_valid_article"]
