"""Speed kernels of the blockwise meta-learner (`blockwise.py`, `dynamic/meta_learner.py`): autograd Functions that
do what plain ops do, with a faster CPU path."""
from __future__ import annotations

import math

import torch
from torch import Tensor


class _Asinh(torch.autograd.Function):
    """asinh from log1p and sqrt: ATen's CPU asinh is not vectorised (measured 17 ns/element against
    about 3 for these ops), and the meta-learner takes two per coordinate.

    asinh|x| = log1p(|x| + |x|² / (1 + sqrt(1 + |x|²))), exact to a few ulp; log(2|x|) beyond 1e15, where
    |x|² would lose the 1 (and overflow from 1.8e19 in float32).
    """

    @staticmethod
    def forward(ctx, x):
        ax = x.abs()
        sq = ax * ax
        y = torch.log1p(ax + sq / (1.0 + torch.sqrt(sq + 1.0)))
        y = torch.where(ax > 1e15, torch.log(ax) + math.log(2.0), y)
        ctx.save_for_backward(x)
        return y.copysign_(x)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * torch.rsqrt(x * x + 1.0)


def fast_asinh(x: Tensor) -> Tensor:
    return _Asinh.apply(x)


class TransposedLinear(torch.autograd.Function):
    """`w @ h^T` for `h [N, k]`, `w [m, k]` -> `[m, N]`, whose backward returns a contiguous `[N, k]` gradient
    (autograd's own would be a transposed view, and the sigmoid backward behind it ~5x slower)."""

    @staticmethod
    def forward(ctx, h, w):
        ctx.save_for_backward(h, w)
        return torch.mm(w, h.t())

    @staticmethod
    def backward(ctx, grad):
        h, w = ctx.saved_tensors
        d_h = torch.mm(grad.t(), w) if ctx.needs_input_grad[0] else None
        d_w = torch.mm(grad, h) if ctx.needs_input_grad[1] else None
        return d_h, d_w


__all__ = ["TransposedLinear", "fast_asinh"]
