"""Weights & Biases panels of an evaluation (helpers and offline behaviour: `run/dashboard.py`)."""
from __future__ import annotations

from pathlib import Path
from typing import Mapping

from ..run.dashboard import active, line_series


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


__all__ = ["log_evaluation"]
