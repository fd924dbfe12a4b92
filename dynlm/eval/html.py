"""One self-contained HTML page per article: every token coloured by the loss gain of an adaptive method.

Green: the adaptive method predicts the token better than the static model; red: worse; white: the same.
The colour scale is symmetric and saturates at `scale` nats (shown in the legend, which stays at the top of the
window while the text scrolls); an evaluation gives all its pages the same scale (`color_scale` of every token
it read), so that colours compare across pages; hovering a token shows both losses. Every page can name, by title,
the articles where the method helps most and least (`extremes`). Tokens are HTML-escaped (`<unk>` shows as text).
"""
from __future__ import annotations

import html
import math
from typing import Collection, List, NamedTuple, Sequence

import torch
from torch import Tensor

from .aggregate import gain_per_token, pick_extreme_articles
from .titles import readable_title

EOS = "<eos>"
SP_SPACE = "\u2581"  # SentencePiece's word-start marker


def gain_color(gain: float, scale: float) -> str:
    """`rgb(...)`: white at 0, green for positive gains, red for negative ones, saturating at ±scale."""
    t = max(-1.0, min(1.0, gain / scale)) if scale > 0 and math.isfinite(gain) else 0.0
    if t >= 0:  # white -> green (46, 160, 67)
        r, g, b = 255 - t * (255 - 46), 255 - t * (255 - 160), 255 - t * (255 - 67)
    else:  # white -> red (214, 39, 40)
        t = -t
        r, g, b = 255 - t * (255 - 214), 255 - t * (255 - 39), 255 - t * (255 - 40)
    return f"rgb({round(r)},{round(g)},{round(b)})"


def color_scale(gain: Tensor, quantile: float = 0.98) -> float:
    """The saturation point: the `quantile` of |gain|, at least 0.1 nats."""
    if gain.numel() == 0:
        return 1.0
    return max(float(torch.quantile(gain.abs().double(), quantile)), 0.1)


def _token_text(tok: str, kind: str, first: bool) -> str:
    if kind == "sentencepiece":
        return tok.replace(SP_SPACE, " ")
    return tok if first else " " + tok


class Extreme(NamedTuple):
    """An article where the method helps most or least: its mean loss gain per token over the reference."""
    label: str  # "helps most" | "helps least"
    index: int
    title: str
    gain: float


def helps_most_least(rows: Sequence[dict], method: str, min_tokens: int) -> List[Extreme]:
    """The articles of `rows` (`article_rows`) where `method` helps most and least (`pick_extreme_articles`)."""
    gain = gain_per_token(rows, method)
    picked = pick_extreme_articles(gain, torch.tensor([r["tokens"] for r in rows]), min_tokens)
    labels = ("helps most", "helps least")
    return [Extreme(label, a, rows[a]["title"], float(gain[a])) for label, a in zip(labels, picked)]


def _extremes(extremes: Sequence[Extreme], method: str, index: int, linked: Collection[int]) -> str:
    items = []
    for e in extremes:
        name = html.escape(f"{e.index}: {readable_title(e.title)}")
        if e.index == index:
            name = f"<b>{name}</b> (this page)"
        elif e.index in linked:  # its page is written next to this one
            name = f'<a href="article_{e.index}.html">{name}</a>'
        items.append(f"{html.escape(method)} {e.label}: {name}, {e.gain:+.4f} nats/token")
    return f'<div class="extremes">{" · ".join(items)}</div>' if items else ""


def _legend(scale: float, method: str, reference: str) -> str:
    stops = ", ".join(gain_color(scale * (i / 10.0), scale) + f" {(i + 10) * 5}%" for i in range(-10, 11))
    return (
        '<div class="legend"><div><b>colour</b>: loss gain = loss(' + html.escape(reference) + ") − loss("
        + html.escape(method) + ") in nats; green: " + html.escape(method) + " better, red: worse</div>"
        f'<div class="bar" style="background: linear-gradient(to right, {stops});"></div>'
        f'<div class="ticks"><span>≤ −{scale:.2f}</span><span>0</span><span>≥ +{scale:.2f}</span></div></div>'
    )


def article_page(title: str, index: int, tokens: Sequence[str], kind: str, reference_loss: Tensor,
                 method_loss: Tensor, method: str, reference: str = "static", scale: float | None = None,
                 summary: str = "", extremes: Sequence[Extreme] = (), linked: Collection[int] = ()) -> str:
    """The HTML page of one article; `tokens` are the decoded tokens (`<eos>` ends a line). `extremes`
    (`helps_most_least`) are named at the top of the page, with a link to `article_<index>.html` for those whose
    index is in `linked` (the pages written)."""
    gain = (reference_loss.double() - method_loss.double())
    scale = color_scale(gain) if scale is None else scale
    spans = []
    first = True
    for tok, g, lr, lm in zip(tokens, gain.tolist(), reference_loss.tolist(), method_loss.tolist()):
        tip = f"{reference} {lr:.3f} · {method} {lm:.3f} · gain {g:+.3f}"
        style = f"background:{gain_color(g, scale)}"
        if tok == EOS:
            spans.append(f'<span class="eos" style="{style}" title="{html.escape(tip)}">↵</span><br>\n')
            first = True
            continue
        text = html.escape(_token_text(tok, kind, first))
        spans.append(f'<span style="{style}" title="{html.escape(tip)}">{text}</span>')
        first = False
    n = len(tokens)
    mean_gain = float(gain.mean()) if n else 0.0
    role = next((e.label for e in extremes if e.index == index), None)
    head = html.escape(f"article {index}: {readable_title(title)}" + (f" ({method} {role})" if role else ""))
    return f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>{head}</title>
<style>
body {{ font-family: Georgia, serif; max-width: 60em; margin: 2em auto; line-height: 1.7; }}
.text span {{ white-space: pre-wrap; border-radius: 2px; }}
.text .eos {{ color: #999; font-size: 0.8em; }}
/* sticky: the colour key stays in view while the reader scrolls through a long article */
.legend {{ font-family: sans-serif; font-size: 0.85em; margin: 1em 0; padding: 0.4em 0;
  position: sticky; top: 0; z-index: 1; background: white; border-bottom: 1px solid #ddd; }}
.legend .bar {{ height: 14px; width: 24em; border: 1px solid #ccc; margin-top: 0.3em; }}
.legend .ticks {{ display: flex; justify-content: space-between; width: 24em; }}
.summary, .extremes {{ font-family: sans-serif; font-size: 0.9em; color: #333; }}
</style></head>
<body>
<h2>{head}</h2>
<div class="summary">{n} tokens · mean gain of {html.escape(method)} over {html.escape(reference)}:
{mean_gain:+.4f} nats/token{(" · " + html.escape(summary)) if summary else ""}</div>
{_extremes(extremes, method, index, linked)}
{_legend(scale, method, reference)}
<div class="text">{"".join(spans)}</div>
</body></html>
"""


__all__ = ["Extreme", "article_page", "color_scale", "gain_color", "helps_most_least"]
