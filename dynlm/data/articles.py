"""Article boundaries of WikiText: which line starts which article, and its title.

A title line is ` = Title = ` (one "=" each side; ` = = Section = = ` lines are headings) with a blank
line just before and just after. The regex alone also matches table legends and formula fragments
(629 "titles" in WikiText-2 train instead of 600); the blank-line condition removes them.

A text file of one's own (`header_line_starts`) is read more loosely: a `= Title =` line starts an article
when it begins the file or follows a blank line, whatever follows it and however it is spaced.
"""
from __future__ import annotations

import re
from typing import Sequence

TITLE_RE = re.compile(r"^ = [^=].* = $")
UNTITLED = "(untitled)"


def is_blank(line: str) -> bool:
    return not line.strip()


def title_lines(lines: Sequence[str]) -> list[int]:
    """Indices of the lines that start an article.

    The start of the text counts as a blank line before (so a title on line 0 still starts an
    article); the end of the text does not count as a blank line after.
    """
    out = []
    for i, line in enumerate(lines):
        if (
            TITLE_RE.match(line)
            and (i == 0 or is_blank(lines[i - 1]))
            and i + 1 < len(lines)
            and is_blank(lines[i + 1])
        ):
            out.append(i)
    return out


def title_of(line: str) -> str:
    return line[3:-3].strip()  # " = Valkyria Chronicles III = " -> "Valkyria Chronicles III"


def article_line_starts(lines: Sequence[str]) -> tuple[list[int], list[str]]:
    """(first line of each article, title of each article).

    Article 0 always starts at line 0: lines before the first title (the leading blank line) belong
    to it. A blank line before a title belongs to the previous article, so every line belongs to
    exactly one article. Text without any title is one untitled article.
    """
    starts = title_lines(lines)
    titles = [title_of(lines[i]) for i in starts]
    if not starts:
        return [0], [UNTITLED]
    starts[0] = 0
    return starts, titles


# `= Title =` however spaced; the title neither starts nor ends with "=" (`= = Section = =` is a heading)
HEADER_RE = re.compile(r"^\s*=\s*([^=\s](?:.*[^=\s])?)\s*=\s*$")


def header_line_starts(lines: Sequence[str], untitled: str = UNTITLED) -> tuple[list[int], list[str]]:
    """(first line of each article, title of each article) of a text file of one's own.

    A `= Title =` line that begins the text or follows a blank line starts an article. Text before the first
    such line is an article titled `untitled` (blank lines alone join the first titled article); text without
    any is one article titled `untitled`. WikiText's valid and test files give the articles of
    `article_line_starts`.
    """
    heads = [i for i, line in enumerate(lines) if HEADER_RE.match(line) and (i == 0 or is_blank(lines[i - 1]))]
    titles = [HEADER_RE.match(lines[i]).group(1) for i in heads]
    if not heads:
        return [0], [untitled]
    if any(not is_blank(line) for line in lines[: heads[0]]):
        return [0] + heads, [untitled] + titles
    return [0] + heads[1:], titles
