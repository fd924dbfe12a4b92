"""Article titles as a reader expects them, for plot labels and HTML pages.

WikiText stores titles tokenised ("M @-@ 82 ( Michigan highway )"); joining the tokens back
("M-82 (Michigan highway)") makes labels shorter and easier to read.
"""
from __future__ import annotations

import re
from typing import Optional


def readable_title(title: str, max_chars: Optional[int] = None) -> str:
    """`title` detokenised and, when longer than `max_chars`, cut with an ellipsis."""
    t = re.sub(r" @(.)@ ", r"\1", title)  # "M @-@ 82" -> "M-82", "1 @,@ 000" -> "1,000"
    t = re.sub(r" (?=[,;:!?)]|'s\b)", "", t)  # no space before closing punctuation or a possessive
    t = t.replace("( ", "(")
    if max_chars is not None and len(t) > max_chars:
        t = t[: max_chars - 1].rstrip() + "…"
    return t


__all__ = ["readable_title"]
