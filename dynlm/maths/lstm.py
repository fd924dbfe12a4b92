"""The LSTM layer as plain differentiable ops: the reference the fused per-stream kernel is tested against and
recomputes for double backward. Gate order is PyTorch's (input, forget, cell, output)."""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor

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


def lstm_layer_reference(
    x: Tensor, state: State, w_ih: Tensor, w_hh: Tensor, b_ih: Optional[Tensor], b_hh: Optional[Tensor]
) -> Tuple[Tensor, State]:
    """One LSTM layer over `x [T, B, I]` from `state = (h [B, H], c [B, H])`, step by step; every weight shared
    or per stream (`[B, ...]`), biases optional. Returns the outputs `[T, B, H]` and the final `(h, c)`."""
    bias = None
    if b_ih is not None:
        bias = b_ih + b_hh if b_hh is not None else b_ih
    elif b_hh is not None:
        bias = b_hh
    if bias is not None and bias.dim() == 2:  # per-stream bias [B, 4H] broadcasts over time
        bias = bias.unsqueeze(0)
    xw = project_inputs(x, w_ih, bias)
    h, c = state
    outputs = []
    for t in range(x.shape[0]):
        h, c = lstm_cell(xw[t] + recurrent_matmul(h, w_hh), c)
        outputs.append(h)
    return torch.stack(outputs), (h, c)


__all__ = ["State", "lstm_cell", "lstm_layer_reference"]
