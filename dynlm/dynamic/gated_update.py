"""Krause's rule as COPY / UPDATE / FLUSH gates: the learned rule's prior (docs/design.md §2). The gated step
itself is `maths/gated.py`:

    θ' = copy · θ + update · (θ − α ĝ) + flush · θ0,   copy + update + flush = 1,   ĝ = g / (rms + ε)

Krause et al.'s dynamic evaluation, θ' = θ − η ĝ + λ · decrate · (θ0 − θ), with decrate = rms / decay_norm
capped at 1/λ (decay_norm: the mean over tensors of each tensor's mean rms), is this update with constant gates:
update = u, α = η / u, flush = min(λ · decrate, 1), copy = 1 − u − flush.
"""
from __future__ import annotations

import math
from typing import Tuple

import torch
from torch import Tensor

from ..maths.krause import krause_flush

# The learned rule's log-gates need copy > 0: its prior keeps flush this far below 1 (Krause allows 1).
MAX_PRIOR_FLUSH = 1.0 - 1e-3


def krause_gate_logits(rms: Tensor, decay_norm: float, lam: float, update: float) -> Tuple[Tensor, float]:
    """`([3, *shape] log-gates (copy, update, flush), u)` whose softmax is Krause's rule for one tensor.

    The UPDATE gate is `update`, lowered for this tensor where its largest flush leaves no room for it
    (copy = 1 − u − flush must stay positive); the step size α = η / u keeps update · α = η either way. Only a
    flush above `MAX_PRIOR_FLUSH` (λ · decrate > 0.999) is not represented exactly.
    """
    flush = krause_flush(rms, decay_norm, lam).clamp(max=MAX_PRIOR_FLUSH)
    u = min(update, (1.0 - float(flush.max())) * (1.0 - 1e-4))
    copy = 1.0 - u - flush
    return torch.stack([copy.log(), torch.full_like(rms, math.log(u)), flush.log()]), u
