"""A functional LSTM layer that takes its weights as arguments.

Weights are either shared by the whole batch (`w_hh: [4H, H]`) or given per stream (`w_hh: [B, 4H, H]`),
which is what dynamic evaluation and the meta-learner need: every stream reads with its own medium-term
memory. Gate order is PyTorch's (input, forget, cell, output), so the same tensors drive `nn.LSTM`.

Shared weights go through `torch.lstm`, the fused kernel behind `nn.LSTM` (fast on CPU and cuDNN on GPU).
Per-stream weights go through `per_stream_lstm.py`: the input projection for all time steps in one batched
matmul, then a fused recurrence (one autograd Function) whose weight gradient is one batched matmul over
time. `lstm_layer_loop` is the plain-autograd reference it is tested against.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor

from .per_stream_lstm import per_stream_lstm_layer

State = Tuple[Tensor, Tensor]


def lstm_cell(gates: Tensor, c: Tensor) -> State:
    """One LSTM step from pre-activation gates `[B, 4H]` and the previous cell `[B, H]`."""
    i, f, g, o = gates.chunk(4, dim=-1)
    c_next = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    h_next = torch.sigmoid(o) * torch.tanh(c_next)
    return h_next, c_next


def project_inputs(x: Tensor, w_ih: Tensor, b: Optional[Tensor]) -> Tensor:
    """`x [T, B, I]` times `w_ih` (`[4H, I]` or `[B, 4H, I]`) plus bias (`[4H]` or `[B, 4H]`) -> `[T, B, 4H]`."""
    if w_ih.dim() == 2:
        out = x @ w_ih.t()
    else:
        out = torch.einsum("tbi,bgi->tbg", x, w_ih)
    return out if b is None else out + b


def recurrent_matmul(h: Tensor, w_hh: Tensor) -> Tensor:
    """`h [B, H]` times `w_hh` (`[4H, H]` or `[B, 4H, H]`) -> `[B, 4H]`."""
    if w_hh.dim() == 2:
        return h @ w_hh.t()
    return torch.bmm(w_hh, h.unsqueeze(-1)).squeeze(-1)


def lstm_layer_loop(
    x: Tensor, state: State, w_ih: Tensor, w_hh: Tensor, b_ih: Optional[Tensor], b_hh: Optional[Tensor]
) -> Tuple[Tensor, State]:
    """Reference implementation from matmuls; works for shared and per-stream weights."""
    bias = None
    if b_ih is not None:
        bias = b_ih + b_hh if b_hh is not None else b_ih
    if bias is not None and bias.dim() == 2:  # per-stream bias [B, 4H] broadcasts over time
        bias = bias.unsqueeze(0)
    xw = project_inputs(x, w_ih, bias)
    h, c = state
    outputs = []
    for t in range(x.shape[0]):
        h, c = lstm_cell(xw[t] + recurrent_matmul(h, w_hh), c)
        outputs.append(h)
    return torch.stack(outputs), (h, c)


def lstm_layer(
    x: Tensor, state: State, w_ih: Tensor, w_hh: Tensor, b_ih: Tensor, b_hh: Tensor
) -> Tuple[Tensor, State]:
    """One LSTM layer over `x [T, B, I]` from `state = (h [B, H], c [B, H])`.

    Returns the outputs `[T, B, H]` and the final `(h, c)`.
    """
    per_stream = w_ih.dim() == 3 or w_hh.dim() == 3 or b_ih.dim() == 2 or b_hh.dim() == 2
    if per_stream:  # fused recurrence, weight gradients as one batched matmul over time (per_stream_lstm.py)
        return per_stream_lstm_layer(x, state, w_ih, w_hh, b_ih, b_hh)
    h0, c0 = state
    out, h, c = torch.lstm(
        x, (h0.unsqueeze(0), c0.unsqueeze(0)), (w_ih, w_hh, b_ih, b_hh),
        True, 1, 0.0, False, False, False,
    )
    return out, (h.squeeze(0), c.squeeze(0))
