"""One split as a token stream with its article metadata (every token knows its article and position)."""
from __future__ import annotations

from dataclasses import dataclass
from itertools import chain
from typing import Optional, Sequence

import torch

from .articles import article_line_starts
from .tokenizer import Tokenizer


@dataclass(eq=False)  # tensor fields: compare by identity
class Split:
    name: str  # "train" | "valid" | "test"
    ids: torch.Tensor  # int64 [N]: the whole split as one stream of token ids
    article_id: torch.Tensor  # int64 [N]: 0-based article of every token (non-decreasing)
    position: torch.Tensor  # int64 [N]: 0-based position of every token inside its article
    titles: list[str]  # title of each article
    article_starts: torch.Tensor  # int64 [num_articles]: index in ids where each article starts
    num_words: int  # whitespace words + one <eos> per line, whatever the tokenizer: for per-word ppl

    @property
    def num_tokens(self) -> int:
        return self.ids.numel()

    @property
    def num_articles(self) -> int:
        return len(self.titles)

    @property
    def article_lengths(self) -> torch.Tensor:
        """int64 [num_articles]: tokens in each article."""
        ends = torch.cat([self.article_starts[1:], self.article_starts.new_tensor([self.num_tokens])])
        return ends - self.article_starts

    def article_slice(self, a: int) -> slice:
        start = int(self.article_starts[a])
        end = int(self.article_starts[a + 1]) if a + 1 < self.num_articles else self.num_tokens
        return slice(start, end)

    def article(self, a: int) -> torch.Tensor:
        """Token ids of article a (decode them with the corpus tokenizer)."""
        return self.ids[self.article_slice(a)]


def count_words(lines: Sequence[str]) -> int:
    return sum(len(line.split()) for line in lines) + len(lines)


def words_per_article(lines: Sequence[str], start_lines: Sequence[int]) -> list[int]:
    """`count_words` of every article, given the first line of each."""
    ends = list(start_lines[1:]) + [len(lines)]
    return [count_words(lines[s:e]) for s, e in zip(start_lines, ends)]


def build_split(name: str, lines: Sequence[str], tokenizer: Tokenizer,
                articles: Optional[tuple[list[int], list[str]]] = None) -> Split:
    """The split of `lines`; `articles` (first line and title of each article) defaults to WikiText's
    (`article_line_starts`)."""
    per_line = tokenizer.encode_lines(lines)  # each line ends with eos, so no line is empty
    line_len = torch.tensor([len(x) for x in per_line], dtype=torch.long)
    ids = torch.tensor(list(chain.from_iterable(per_line)), dtype=torch.long)

    start_lines, titles = articles if articles is not None else article_line_starts(lines)
    starts_mask = torch.zeros(len(lines), dtype=torch.long)
    starts_mask[torch.tensor(start_lines[1:], dtype=torch.long)] = 1
    line_article = torch.cumsum(starts_mask, 0)  # article of every line
    line_offset = torch.cumsum(line_len, 0) - line_len  # first token of every line
    article_starts = line_offset[torch.tensor(start_lines, dtype=torch.long)]
    article_id = torch.repeat_interleave(line_article, line_len)
    position = torch.arange(ids.numel()) - article_starts[article_id]
    return Split(name, ids, article_id, position, titles, article_starts, count_words(lines))
