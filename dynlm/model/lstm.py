"""A functional LSTM layer that takes its weights as arguments.

Weights are either shared by the whole batch (`w_hh: [4H, H]`) or given per stream (`w_hh: [B, 4H, H]`),
which is what dynamic evaluation and the meta-learner need: every stream reads with its own medium-term
memory. Gate order is PyTorch's (input, forget, cell, output), so the same tensors drive `nn.LSTM`.

Shared weights go through `torch.lstm`, the fused kernel behind `nn.LSTM` (fast on CPU and cuDNN on GPU).
Per-stream weights go through `kernels/per_stream_lstm.py`: the input projection for all time steps in one
batched matmul, then a fused recurrence (one autograd Function) whose weight gradient is one batched matmul over
time. `maths/lstm.py:lstm_layer_reference` is the plain-autograd reference both are tested against.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor

from ..kernels.per_stream_lstm import WeightFactors, per_stream_lstm_layer
from ..maths.lstm import State


def lstm_layer(
    x: Tensor, state: State, w_ih: Tensor, w_hh: Tensor, b_ih: Tensor, b_hh: Tensor,
    factors: Optional[WeightFactors] = None,
) -> Tuple[Tensor, State]:
    """One LSTM layer over `x [T, B, I]` from `state = (h [B, H], c [B, H])`.

    Returns the outputs `[T, B, H]` and the final `(h, c)`. `factors`: the caller's `WeightFactors`, to which the
    per-stream weights it names hand their gradients as factors (`kernels/per_stream_lstm.py`).
    """
    per_stream = w_ih.dim() == 3 or w_hh.dim() == 3 or b_ih.dim() == 2 or b_hh.dim() == 2
    if per_stream:  # fused recurrence, weight gradients as one batched matmul over time
        return per_stream_lstm_layer(x, state, w_ih, w_hh, b_ih, b_hh, factors)
    h0, c0 = state
    out, h, c = torch.lstm(
        x, (h0.unsqueeze(0), c0.unsqueeze(0)), (w_ih, w_hh, b_ih, b_hh),
        True, 1, 0.0, False, False, False,
    )
    return out, (h.squeeze(0), c.squeeze(0))
