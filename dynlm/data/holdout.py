"""Held-out meta-training text: the last N articles of the train split, kept out of stage 1 for stage 2.

Stage 2 meta-trains on text that the static model has not fitted, as it will meet at test time
(`data.meta_holdout_articles`). The cut is made on the text lines, at the line that starts article A − N of
A, so both parts keep whole articles: a title line stays a title line on either side of the cut (it is the
first line of the held-out part, which counts as preceded by a blank line), and every other line keeps its
neighbours. Each part is then encoded on its own, line by line, which gives exactly the ids of the whole
split cut at that article's first token.
"""
from __future__ import annotations

from .articles import article_line_starts
from .errors import DataError
from .sources import SplitText, lines_sha256

HELDOUT = "heldout"  # the held-out articles' split name (meta.split=heldout)
KEY = "data.meta_holdout_articles"


def hold_out(train: SplitText, n: int) -> tuple[SplitText, SplitText]:
    """(the first A − n articles, the last n articles) of the train text, n >= 1.

    Each part's sha256 is that of its lines written as a file, so it names the text actually read (and is
    the same whether the split came from a folder or from the hub).
    """
    starts, _ = article_line_starts(train.lines)
    if not 1 <= n < len(starts):
        raise DataError(
            f"{KEY}={n} but {train.origin} has {len(starts)} articles: stage 1 needs at least one. "
            f"Fix: choose {KEY} between 0 and {len(starts) - 1}"
        )
    cut = starts[len(starts) - n]
    head, tail = train.lines[:cut], train.lines[cut:]
    return (
        SplitText(head, lines_sha256(head), f"{train.origin} (its first {len(starts) - n} articles)"),
        SplitText(tail, lines_sha256(tail), f"{train.origin} (its last {n} articles, {KEY})"),
    )
