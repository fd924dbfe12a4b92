"""The maths of the COPY / UPDATE / FLUSH update, as pure functions (DESIGN §2).

    θ' = copy · θ + update · (θ − α ĝ) + flush · θ0,   copy + update + flush = 1,   ĝ = g / (sqrt(v) + ε)

Krause et al.'s dynamic evaluation, θ' = θ − η ĝ + λ · decrate · (θ0 − θ) with decrate = rms / mean(rms),
is this update with constant gates: update = u, α = η / u, flush = λ · decrate, copy = 1 − u − flush.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor


def normalized_grad(g: Tensor, rms: Tensor, eps: float) -> Tensor:
    return g / (rms + eps)


def gated_update(theta: Tensor, theta0: Tensor, step: Tensor, copy: Tensor, update: Tensor, flush: Tensor) -> Tensor:
    return copy * theta + update * (theta - step) + flush * theta0


def krause_flush(rms: Tensor, mean_rms: float, lam: float, update: float) -> Tensor:
    """Krause's per-coordinate decay λ · rms / mean(rms), kept inside the simplex (copy ≥ 0).

    Krause caps decrate at 1/λ (flush ≤ 1); with an UPDATE gate u the cap is 1 − u. Only coordinates whose
    rms exceeds (1 − u) / λ times the mean are affected (25× the mean with the defaults).
    """
    return (lam * rms / mean_rms).clamp(min=1e-12, max=(1.0 - update) * (1.0 - 1e-4))


def krause_gate_logits(rms: Tensor, mean_rms: float, lam: float, update: float) -> Tensor:
    """`[3, *shape]` log-gates (copy, update, flush) whose softmax is exactly the constant-gate rule."""
    flush = krause_flush(rms, mean_rms, lam, update)
    copy = 1.0 - update - flush
    return torch.stack([copy.log(), torch.full_like(rms, math.log(update)), flush.log()])
