"""Parallel article streams for stage-2 meta-training.

Each of B global streams reads its own list of whole articles, one segment of L prediction pairs at a
time, and cycles over that list forever, so `batch(k)` exists for every k >= 0 and depends on k only
(resume stores k). An article of n tokens gives floor((n-1)/L) consecutive segments (the tail is
dropped): segment m reads x = tokens[mL : mL+L], y = tokens[mL+1 : mL+L+1], so y never leaves the
article and a stream's hidden state carries over exactly from one segment to the next. Articles too
short for one segment are skipped.

Ranks: global stream j belongs to rank j % world_size (strided), and rank r's column c is global
stream r + c * world_size. Dealing puts the longest articles on the lowest streams, so striding
spreads them evenly over ranks.
"""
from __future__ import annotations

import heapq
from typing import NamedTuple, Sequence

import torch

from .errors import DataError
from .split import Split


class MetaBatch(NamedTuple):
    x: torch.Tensor  # int64 [L, b]
    y: torch.Tensor  # int64 [L, b]: next tokens, inside the same article
    new_article: torch.Tensor  # bool [b]: first segment of an article: reset that stream's state
    article_id: torch.Tensor  # int64 [b]
    position: torch.Tensor  # int64 [b]: position of x[0] inside its article


def deal_articles(num_segments: Sequence[int], num_streams: int) -> list[list[int]]:
    """Deal articles to streams, balancing segment counts (longest first, to the least loaded stream,
    ties to the lowest stream). Each stream reads its articles in corpus order. Empty articles skipped."""
    order = sorted((a for a, s in enumerate(num_segments) if s > 0), key=lambda a: (-num_segments[a], a))
    heap = [(0, j) for j in range(num_streams)]
    streams: list[list[int]] = [[] for _ in range(num_streams)]
    for a in order:
        load, j = heapq.heappop(heap)
        streams[j].append(a)
        heapq.heappush(heap, (load + num_segments[a], j))
    return [sorted(s) for s in streams]


class MetaStreams:
    def __init__(self, split: Split, num_streams: int, seg_len: int, rank: int = 0, world_size: int = 1):
        if num_streams < 1 or seg_len < 1:
            raise DataError(f"num_streams and seg_len must be >= 1, got {num_streams} and {seg_len}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise DataError(f"bad rank {rank} for world_size {world_size}")
        if num_streams % world_size:
            raise DataError(
                f"num_streams={num_streams} is not divisible by world_size={world_size}. "
                f"Fix: choose num_streams as a multiple of the number of processes"
            )
        self.split, self.seg_len, self.rank, self.world_size = split, seg_len, rank, world_size
        self.num_streams = num_streams
        starts = split.article_starts
        num_seg = ((split.article_lengths - 1) // seg_len).clamp(min=0)
        streams = deal_articles(num_seg.tolist(), num_streams)
        if not all(streams):
            usable = int((num_seg > 0).sum())
            raise DataError(
                f"{split.name}: only {usable} articles are longer than seg_len={seg_len} tokens, fewer than "
                f"num_streams={num_streams}. Fix: lower the number of streams or the segment length"
            )
        self.global_stream_articles = streams
        # Every rank agrees on the epoch length: after this many batches every global stream has read
        # all of its articles at least once (the streams' cycle lengths differ by at most one article).
        self.segments_per_epoch = max(int(num_seg[s].sum()) for s in streams)

        self.stream_articles = streams[rank::world_size]  # this rank's columns
        b = len(self.stream_articles)
        cycles = [int(num_seg[s].sum()) for s in self.stream_articles]
        longest = max(cycles)
        # Per local stream, per cycle step: first token of the segment, its article, its position.
        self._start = torch.zeros(b, longest, dtype=torch.long)
        self._article = torch.zeros(b, longest, dtype=torch.long)
        self._pos = torch.zeros(b, longest, dtype=torch.long)
        for c, arts in enumerate(self.stream_articles):
            art = torch.repeat_interleave(torch.tensor(arts), num_seg[arts])
            first = torch.cumsum(num_seg[arts], 0) - num_seg[arts]
            pos = (torch.arange(art.numel()) - torch.repeat_interleave(first, num_seg[arts])) * seg_len
            self._start[c, : art.numel()] = starts[art] + pos
            self._article[c, : art.numel()] = art
            self._pos[c, : art.numel()] = pos
        self._cycle = torch.tensor(cycles, dtype=torch.long)
        self._cols = torch.arange(b)
        self._steps = torch.arange(seg_len).unsqueeze(1)

    @property
    def num_local_streams(self) -> int:
        return len(self.stream_articles)

    def batch(self, k: int) -> MetaBatch:
        """The k-th segment batch (k >= 0) of this rank's streams."""
        if k < 0:
            raise IndexError(f"batch index must be >= 0, got {k}")
        step = k % self._cycle
        start = self._start[self._cols, step]
        pos = self._pos[self._cols, step]
        idx = start.unsqueeze(0) + self._steps  # [L, b]
        ids = self.split.ids
        return MetaBatch(ids[idx], ids[idx + 1], pos == 0, self._article[self._cols, step], pos)
