"""Aggregating per-token losses: per article, by relative position inside the article, smoothed gains.

Pure functions on tensors. Sums are taken in float64 and every perplexity is exp(sum NLL / sum tokens) over
the tokens it describes, never a mean of per-article perplexities.
"""
from __future__ import annotations

import math
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import Tensor

from ..data.articles import article_line_starts
from ..data.split import words_per_article


def perplexity(nll_sum: float, tokens: int) -> float:
    """exp(total NLL / total tokens); inf where that overflows, nan for no tokens."""
    if tokens <= 0:
        return math.nan
    mean = nll_sum / tokens
    return math.exp(mean) if mean < 700 else math.inf


def article_totals(nll: Tensor, article_id: Tensor, num_articles: int) -> Tuple[Tensor, Tensor]:
    """`(tokens [A] int64, nll_sum [A] float64)` for per-token `nll [N]` and `article_id [N]` (0-based)."""
    tokens = torch.bincount(article_id, minlength=num_articles)
    sums = torch.zeros(num_articles, dtype=torch.float64).index_add_(0, article_id, nll.double())
    return tokens, sums


def relative_position(position: Tensor, article_id: Tensor, article_lengths: Tensor) -> Tensor:
    """`[N]` float64 in [0, 1): position of every token divided by the length of its article."""
    return position.double() / article_lengths[article_id].double()


def position_bin_index(rel: Tensor, bins: int) -> Tensor:
    return (rel * bins).floor().long().clamp_(0, bins - 1)


def position_bins(nll: Tensor, rel: Tensor, bins: int) -> Tuple[Tensor, Tensor]:
    """`(mean loss [bins] float64, tokens [bins] int64)` by relative position; nan where a bin is empty."""
    idx = position_bin_index(rel, bins)
    count = torch.bincount(idx, minlength=bins)
    sums = torch.zeros(bins, dtype=torch.float64).index_add_(0, idx, nll.double())
    mean = torch.where(count > 0, sums / count.clamp(min=1), torch.full_like(sums, math.nan))
    return mean, count


def bin_centers(bins: int) -> List[float]:
    return [(i + 0.5) / bins for i in range(bins)]


def moving_average(x: Tensor, window: int) -> Tensor:
    """Trailing mean over the last `window` values (fewer at the start), same length as `x`."""
    x = x.double()
    window = max(1, min(int(window), x.numel()))
    c = torch.cat([x.new_zeros(1), torch.cumsum(x, 0)])
    i = torch.arange(1, x.numel() + 1)
    lo = (i - window).clamp(min=0)
    return (c[i] - c[lo]) / (i - lo)


def article_word_counts(lines: Sequence[str]) -> List[int]:
    """Words of every article of a split's text (whitespace words + one `<eos>` per line, as `Split.num_words`)."""
    return words_per_article(lines, article_line_starts(lines)[0])


def method_totals(nll: Tensor, num_words: int, per_word: bool) -> Dict[str, float]:
    total = float(nll.double().sum())
    n = int(nll.numel())
    out = {"nll": total, "tokens": n, "loss": total / n if n else math.nan, "ppl": perplexity(total, n)}
    if per_word:
        out["words"] = num_words
        out["word_ppl"] = perplexity(total, num_words)
    return out


def first_diverged_article(rows: Sequence[dict], method: str) -> Optional[int]:
    """The first article (of `article_rows`) whose perplexity under `method` is inf or NaN: its losses became NaN,
    or so large that exp(mean loss) overflows (a mean above 700 nats, where uniform guessing costs ln V); or None."""
    return next((r["index"] for r in rows if not math.isfinite(r[method]["ppl"])), None)


def article_rows(
    losses: Mapping[str, Tensor], article_id: Tensor, titles: Sequence[str], words: Sequence[int]
) -> List[dict]:
    """One dict per article: index, title, tokens, words and `{method: {nll, loss, ppl}}`."""
    num = len(titles)
    tokens = None
    per_method = {}
    for m, nll in losses.items():
        tokens, sums = article_totals(nll, article_id, num)
        per_method[m] = sums
    rows = []
    for a in range(num):
        n = int(tokens[a]) if tokens is not None else 0
        row = {"index": a, "title": titles[a], "tokens": n, "words": int(words[a])}
        for m, sums in per_method.items():
            s = float(sums[a])
            row[m] = {"nll": s, "loss": s / n if n else math.nan, "ppl": perplexity(s, n)}
        rows.append(row)
    return rows


def gain_per_token(rows: Sequence[dict], method: str, reference: str = "static") -> Tensor:
    """`[A]` mean loss gain per token of `method` over `reference` in every article (positive: method better)."""
    return torch.tensor([(r[reference]["nll"] - r[method]["nll"]) / max(r["tokens"], 1) for r in rows],
                        dtype=torch.float64)


def pick_extreme_articles(gain: Tensor, tokens: Tensor, min_tokens: int) -> List[int]:
    """`[best, worst]` article by mean gain, among articles of at least `min_tokens` tokens when any are."""
    ok = tokens >= min_tokens
    if not bool(ok.any()):
        ok = torch.ones_like(ok)
    masked_hi = torch.where(ok, gain, torch.full_like(gain, -math.inf))
    masked_lo = torch.where(ok, gain, torch.full_like(gain, math.inf))
    best, worst = int(masked_hi.argmax()), int(masked_lo.argmin())
    return [best] if best == worst else [best, worst]


__all__ = [
    "article_rows", "article_totals", "article_word_counts", "bin_centers", "first_diverged_article", "gain_per_token",
    "method_totals", "moving_average", "perplexity", "pick_extreme_articles", "position_bin_index",
    "position_bins", "relative_position",
]
