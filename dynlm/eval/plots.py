"""PNG figures of an evaluation (matplotlib, Agg backend: no display needed).

Figures use the constrained layout: it makes room for titles, rotated labels and legends outside the axes at
every draw, so nothing is cut at the figure's edge.
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from torch import Tensor  # noqa: E402

from ..dynamic.rules import LEARNED  # noqa: E402
from .titles import readable_title  # noqa: E402

# a method without a colour of its own (another fixed rule) takes matplotlib's next one
COLORS = {"static": "#7f7f7f", "dyneval": "#1f77b4", LEARNED: "#d62728"}
# The static model is the reference, and the adaptive curves often lie right on it (early in an article, or
# a learned rule that starts as dyneval): on top of them (zorder), dashed and black, it stays visible and the
# solid curves show through its gaps.
STATIC_STYLE = {"color": "black", "ls": "--", "lw": 1.5, "zorder": 3}
TITLE_CHARS = 28  # article titles in labels are cut to this many characters


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_position(centers: Sequence[float], loss: Mapping[str, Sequence[float]],
                  gain: Mapping[str, Sequence[float]], path: Path, title: str) -> Path:
    """Mean loss (left) and gain over static (right) against the relative position inside the article."""
    fig, axes = plt.subplots(1, 2 if gain else 1, figsize=(11 if gain else 6, 4), squeeze=False,
                             layout="constrained")
    ax = axes[0][0]
    for m, ys in loss.items():
        style = STATIC_STYLE if m == "static" else {"color": COLORS.get(m), "marker": "o", "ms": 3}
        ax.plot(centers, ys, label=m, **style)
    ax.set_xlabel("relative position in the article")
    ax.set_ylabel("mean loss (nats / token)")
    ax.set_title(title)
    ax.legend()
    ax.grid(alpha=0.3)
    if gain:
        ax = axes[0][1]
        ax.axhline(0.0, label="static (no gain)", **STATIC_STYLE)  # the same reference, drawn the same way
        for m, ys in gain.items():
            ax.plot(centers, ys, marker="o", ms=3, label=f"{m} − static", color=COLORS.get(m))
        ax.set_xlabel("relative position in the article")
        ax.set_ylabel("loss gain over static (nats / token)")
        ax.set_title("gain over static (higher is better)")
        ax.legend()
        ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_article_ppl(rows: Sequence[dict], methods: Sequence[str], path: Path, max_articles: int) -> Path:
    """Grouped bars: the perplexity of every article (the first `max_articles`) for every method.

    Linear y axis: differences between methods read directly as perplexity points. Articles are labelled
    "index: title" (the index names the HTML page and the CSV row; WikiText has many "<unk> <unk>" titles).
    """
    rows = list(rows)[:max_articles]
    n, k = len(rows), len(methods)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.25 * n * k + 2), 6), layout="constrained")
    width = 0.8 / k
    for j, m in enumerate(methods):
        xs = [i + (j - (k - 1) / 2) * width for i in range(n)]
        ax.bar(xs, [r[m]["ppl"] for r in rows], width=width, label=m, color=COLORS.get(m))
    ax.set_xticks(range(n), [f"{r['index']}: {readable_title(r['title'], TITLE_CHARS)}" for r in rows],
                  rotation=45, ha="right", rotation_mode="anchor", fontsize=8)
    ax.set_ylabel("perplexity (lower is better)")
    ax.set_title("perplexity per article")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)  # right of the bars, never on them
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    return _save(fig, path)


def plot_instant_gain(gains: Mapping[str, Tensor], starts: Sequence[int], titles: Sequence[str], smooth: int,
                      path: Path, offset: int = 0) -> Path:
    """The loss gain over static token by token (moving average of `smooth` tokens) over consecutive articles.

    `gains[m]` are already smoothed and cover the articles whose local start indices are `starts`; `offset`
    is the index of their first token in the split (for the x axis). Article titles label the article starts on
    a top axis and the legend sits right of the plot: neither covers the curves.
    """
    fig, ax = plt.subplots(figsize=(12, 4.8), layout="constrained")
    n = 0
    for m, g in gains.items():
        n = g.numel()
        ax.plot(range(offset, offset + n), g.numpy(), lw=0.9, label=f"{m} − static", color=COLORS.get(m))
    ax.axhline(0.0, label="static (no gain)", **STATIC_STYLE)
    for s in starts:
        ax.axvline(offset + s, color="#999999", ls=":", lw=0.8)
    ax.set_xlim(offset, offset + max(n, 1))
    top = ax.secondary_xaxis("top")
    top.set_xticks([offset + s for s in starts], [readable_title(t, TITLE_CHARS) for t in titles],
                   rotation=45, ha="left", rotation_mode="anchor", fontsize=8)
    ax.set_xlabel("token index in the split")
    ax.set_ylabel(f"loss gain over static\n(moving average, {smooth} tokens)")
    ax.set_title("instant loss gain while reading consecutive articles (dotted: article starts)")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    ax.grid(alpha=0.3)
    return _save(fig, path)


__all__ = ["plot_article_ppl", "plot_instant_gain", "plot_position"]
