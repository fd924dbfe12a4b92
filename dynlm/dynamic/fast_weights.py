"""Fast (dynamic) weights: name -> tensor dicts with one copy per stream, built and reset functionally.

Built from `named_parameters()` (each parameter once, so a tied embedding is one entry), never from
`state_dict()`. Static parameters are read, never written: every function here returns new tensors.
"""
from __future__ import annotations

from fnmatch import fnmatch
from typing import Dict, List, Mapping, Sequence

import torch
from torch import Tensor, nn

FastWeights = Dict[str, Tensor]


def select_dynamic(model: nn.Module, patterns: Sequence[str]) -> List[str]:
    """Names of the parameters that are rewritten while reading, in `named_parameters()` order."""
    names = [n for n, _ in model.named_parameters() if any(fnmatch(n, p) for p in patterns)]
    if not names:
        available = [n for n, _ in model.named_parameters()]
        raise ValueError(f"meta.dynamic={list(patterns)} matches no parameter; available: {available}")
    return names


def per_stream(theta0: Mapping[str, Tensor], batch_size: int) -> FastWeights:
    """One copy of θ0 per stream, `[B, *shape]` (a broadcast view until the first update writes it).

    Built in grad mode whatever the caller's mode: a view of a parameter made under `no_grad` claims
    `requires_grad` yet carries no graph, and gradients w.r.t. it would silently come back empty.
    """
    with torch.enable_grad():
        return {n: t.unsqueeze(0).expand(batch_size, *t.shape) for n, t in theta0.items()}


def _rows(mask: Tensor, like: Tensor) -> Tensor:
    return mask.view(-1, *([1] * (like.dim() - 1)))


def reset_streams(fast: Mapping[str, Tensor], theta0: Mapping[str, Tensor], mask: Tensor) -> FastWeights:
    """Streams where `mask [B]` is True go back to θ0 (a new article: no shared medium-term memory)."""
    return {n: torch.where(_rows(mask, t), theta0[n].unsqueeze(0), t) for n, t in fast.items()}


def zero_rows(t: Tensor, mask: Tensor) -> Tensor:
    return torch.where(_rows(mask, t), torch.zeros((), dtype=t.dtype, device=t.device), t)


def finite_streams(fast: Mapping[str, Tensor]) -> Tensor:
    """`[B]` True where every dynamic weight of the stream is finite."""
    ok = None
    for t in fast.values():
        s = torch.isfinite(t).flatten(1).all(dim=1)
        ok = s if ok is None else ok & s
    return ok


def requiring_grad(fast: Mapping[str, Tensor]) -> FastWeights:
    """Make every tensor usable as an input of `autograd.grad` (a fresh leaf where it has no graph)."""
    return {n: t if t.requires_grad else t.detach().requires_grad_() for n, t in fast.items()}
