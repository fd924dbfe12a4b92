"""Krause et al.'s dynamic evaluation step (his `dynamiceval.py`), the one form every implementation computes.

    θ' = θ + λ·decrate·(θ0 − θ) − η·g / (rms + ε),   decrate = rms / decay_norm capped at 1/λ

with flush = λ·decrate (`krause_flush`), gain = η / (rms + ε) and anchored = flush ⊙ θ0 (constant while θ0 is):

    θ' = θ + s_decay · (anchored − flush ⊙ θ) − s_step · (gain ⊙ g)

s = 1 is dynamic evaluation; the cheap learned rule scales the decay and the step per (tensor, stream). Written as
θ plus a small change, no coefficient of θ is rounded (a `keep = 1 − flush` would be, and would pull every
coordinate by up to 2⁻²⁵·|θ| per segment the same way); multiplying by s = 1 is exact, so every s = 1 caller
computes the same bits.
"""
from __future__ import annotations

from typing import Union

from torch import Tensor

Scale = Union[Tensor, float]


def krause_flush(rms: Tensor, decay_norm: float, lam: float) -> Tensor:
    """Krause's per-coordinate decay λ · decrate, decrate = rms / decay_norm capped at 1/λ (so flush ≤ 1)."""
    return (lam * rms / decay_norm).clamp(min=1e-12, max=1.0)


def krause_gain(rms: Tensor, lr: float, eps: float) -> Tensor:
    """η / (rms + ε): the step per unit of gradient."""
    return lr / (rms + eps)


def krause_step(theta: Tensor, anchored: Tensor, flush: Tensor, gain: Tensor, g: Tensor,
                s_decay: Scale = 1.0, s_step: Scale = 1.0) -> Tensor:
    """θ + s_decay · (anchored − flush ⊙ θ) − s_step · (gain ⊙ g), out of place and differentiable. `s_*` are
    numbers or tensors that broadcast against θ (per stream: `[B, 1, ...]`)."""
    return theta + s_decay * (anchored - flush * theta) - s_step * (gain * g)


__all__ = ["krause_flush", "krause_gain", "krause_step"]
