"""AWD-LSTM's dropouts as pure functions of masks.

Masks are sampled once per forward call and applied to activations or weights, never by editing a
module's parameters, so the same code works with static weights, per-stream dynamic weights and under
`torch.func`.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor


def bernoulli_mask(shape: Sequence[int], p: float, like: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
    """Inverted-dropout mask: 0 with probability p, else 1/(1-p)."""
    keep = torch.empty(shape, dtype=like.dtype, device=like.device).bernoulli_(1.0 - p, generator=generator)
    return keep / (1.0 - p)


def locked_dropout(x: Tensor, p: float, training: bool) -> Tensor:
    """Variational dropout on `x [T, B, D]`: one mask per sequence, shared by every time step."""
    if not training or p == 0.0:
        return x
    return x * bernoulli_mask((1, x.shape[1], x.shape[2]), p, x)


def embedding_row_mask(num_embeddings: int, p: float, like: Tensor) -> Tensor:
    """Embedding dropout drops whole words: one factor per vocabulary row, `[V, 1]`."""
    return bernoulli_mask((num_embeddings, 1), p, like)


def drop_connect(w: Tensor, p: float, training: bool) -> Tensor:
    """DropConnect ("weight drop") on a recurrent matrix; per-stream weights `[B, 4H, H]` share one mask."""
    if not training or p == 0.0:
        return w
    return w * bernoulli_mask(w.shape[-2:], p, w)
