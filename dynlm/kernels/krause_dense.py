"""Krause's step (`maths/krause.py:krause_step`) on a gradient held in full, in few passes over the weights and
no allocation beyond two tensors: u = flush ⊙ θ, u = anchored − u, θ' = θ + s_decay · u, then u's memory takes
gain ⊙ g and θ' −= s_step · u. Five passes (four for one stream on CPU, whose scales are then Python numbers).
u is not one `addcmul`: fused into one rounding, anchored − flush ⊙ θ would leave the product's rounding error
where θ = θ0 (a stream's first segment), where the decay is exactly zero. Differentiable: a graph through θ, θ0,
g or the scales is kept (then the intermediates get memory of their own) and computes the same values. Every
caller with s = 1 (dynamic evaluation, the cheap rule at its start) runs the same ops, so computes the same bits.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor


def krause_dense_step(theta: Tensor, anchored: Tensor, flush: Tensor, gain: Tensor, g: Tensor,
                      s_decay: Optional[Tensor] = None, s_step: Optional[Tensor] = None,
                      out: Optional[Tensor] = None) -> Tensor:
    """θ + s_decay · (anchored − flush ⊙ θ) − s_step · gain ⊙ g for `θ, g [B, *shape]`, the rule's constants
    `[*shape]` (anchored = flush ⊙ θ0) and per-stream scales `s_* [B]` (None: 1), into `out` when given (no
    graph; the factored step's blocks)."""
    streams = theta.shape[0]
    ones = None if s_decay is not None and s_step is not None else theta.new_ones(streams)
    s_decay = ones if s_decay is None else s_decay
    s_step = ones if s_step is None else s_step
    u = flush * theta
    graph = u.requires_grad or anchored.requires_grad or g.requires_grad
    u = anchored - u if graph else torch.sub(anchored, u, out=u)
    if streams == 1 and not theta.is_cuda and not (s_decay.requires_grad or s_step.requires_grad):
        new = torch.add(theta, u, alpha=float(s_decay), out=out)
        return new.addcmul_(gain, g, value=-float(s_step))
    view = (-1,) + (1,) * (theta.dim() - 1)
    new = torch.addcmul(theta, u, s_decay.view(view), out=out)
    step = gain * g if graph else torch.mul(gain, g, out=u)
    return new.addcmul_(step, s_step.view(view), value=-1.0)


__all__ = ["krause_dense_step"]
