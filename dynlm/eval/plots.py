"""PNG figures of an evaluation (matplotlib, Agg backend: no display needed)."""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from torch import Tensor  # noqa: E402

COLORS = {"static": "#7f7f7f", "dyneval": "#1f77b4", "meta": "#d62728"}


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_position(centers: Sequence[float], loss: Mapping[str, Sequence[float]],
                  gain: Mapping[str, Sequence[float]], path: Path, title: str) -> Path:
    """Mean loss (left) and gain over static (right) against the relative position inside the article."""
    fig, axes = plt.subplots(1, 2 if gain else 1, figsize=(11 if gain else 6, 4), squeeze=False)
    ax = axes[0][0]
    for m, ys in loss.items():
        ax.plot(centers, ys, marker="o", ms=3, label=m, color=COLORS.get(m))
    ax.set_xlabel("relative position in the article")
    ax.set_ylabel("mean loss (nats / token)")
    ax.set_title(title)
    ax.legend()
    ax.grid(alpha=0.3)
    if gain:
        ax = axes[0][1]
        for m, ys in gain.items():
            ax.plot(centers, ys, marker="o", ms=3, label=f"{m} − static", color=COLORS.get(m))
        ax.axhline(0.0, color="k", lw=0.8)
        ax.set_xlabel("relative position in the article")
        ax.set_ylabel("loss gain over static (nats / token)")
        ax.set_title("gain over static (higher is better)")
        ax.legend()
        ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_article_ppl(rows: Sequence[dict], methods: Sequence[str], path: Path, max_articles: int) -> Path:
    """Grouped bars: the perplexity of every article (the first `max_articles`) for every method."""
    rows = list(rows)[:max_articles]
    n, k = len(rows), len(methods)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.25 * n * k + 2), 4.5))
    width = 0.8 / k
    for j, m in enumerate(methods):
        xs = [i + (j - (k - 1) / 2) * width for i in range(n)]
        ax.bar(xs, [r[m]["ppl"] for r in rows], width=width, label=m, color=COLORS.get(m))
    ax.set_yscale("log")
    ax.set_xticks(range(n))
    ax.set_xticklabels([f"{r['index']}" for r in rows], fontsize=7)
    ax.set_xlabel("article")
    ax.set_ylabel("perplexity (log scale)")
    ax.set_title("perplexity per article")
    ax.legend()
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


def plot_instant_gain(gains: Mapping[str, Tensor], starts: Sequence[int], titles: Sequence[str], smooth: int,
                      path: Path, offset: int = 0) -> Path:
    """The loss gain over static token by token (moving average of `smooth` tokens) over consecutive articles.

    `gains[m]` are already smoothed and cover the articles whose local start indices are `starts`; `offset`
    is the index of their first token in the split (for the x axis).
    """
    fig, ax = plt.subplots(figsize=(12, 4))
    n = 0
    for m, g in gains.items():
        n = g.numel()
        ax.plot(range(offset, offset + n), g.numpy(), lw=0.9, label=f"{m} − static", color=COLORS.get(m))
    ax.axhline(0.0, color="k", lw=0.8)
    top = ax.get_ylim()[1]
    for s, t in zip(starts, titles):
        ax.axvline(offset + s, color="#999999", ls="--", lw=0.8)
        label = t if len(t) <= 28 else t[:27] + "…"
        ax.text(offset + s, top, " " + label, rotation=90, va="top", ha="left", fontsize=7, color="#555555")
    ax.set_xlim(offset, offset + max(n, 1))
    ax.set_xlabel("token index in the split")
    ax.set_ylabel(f"loss gain over static\n(moving average, {smooth} tokens)")
    ax.set_title("instant loss gain while reading consecutive articles (dashed: article starts)")
    ax.legend(loc="lower right")
    ax.grid(alpha=0.3)
    return _save(fig, path)


__all__ = ["plot_article_ppl", "plot_instant_gain", "plot_position"]
