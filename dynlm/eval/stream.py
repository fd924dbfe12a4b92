"""Reading a split as one continuous stream (the standard WikiText protocol).

The stream is primed with one `<eos>` (the line before the split's first line has ended), so that every
token of the split is scored: the token counts and NLL sums then add up exactly to the split's, per article.
"""
from __future__ import annotations

from typing import Iterator, Tuple

import torch
from torch import Tensor


def primed_stream(ids: Tensor, eos_id: int) -> Tensor:
    return torch.cat([ids.new_tensor([eos_id]), ids])


def stream_chunks(ids: Tensor, eos_id: int, chunk: int) -> Iterator[Tuple[int, Tensor, Tensor]]:
    """Yield `(start, x [T, 1], y [T, 1])` covering every token of `ids` once as a target."""
    stream = primed_stream(ids, eos_id)
    n = ids.numel()
    for start in range(0, n, chunk):
        end = min(start + chunk, n)
        yield start, stream[start:end].unsqueeze(1), stream[start + 1 : end + 1].unsqueeze(1)
