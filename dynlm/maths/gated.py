"""The gated step of the learned rule (docs/design.md §2), which its whole-tensor reference and its blockwise form
(`dynamic/meta_learner.py`) both call:

    θ' = copy · θ + update · (θ − α ĝ) + flush · θ0,   copy + update + flush = 1,   ĝ = g / (rms + ε)
"""
from __future__ import annotations

from torch import Tensor


def normalized_grad(g: Tensor, rms: Tensor, eps: float) -> Tensor:
    return g / (rms + eps)


def gated_update(theta: Tensor, theta0: Tensor, step: Tensor, copy: Tensor, update: Tensor, flush: Tensor) -> Tensor:
    return copy * theta + update * (theta - step) + flush * theta0


__all__ = ["gated_update", "normalized_grad"]
