"""Antithetic evolution strategies: a meta-gradient from losses alone (Salimans et al. 2017; Metz et al. 2019).

    ĝ = 1 / (2σP) · Σ_i (L(φ + σ ε_i) − L(φ − σ ε_i)) ε_i,    ε_i ~ N(0, I),  i = 1..P

is an unbiased estimate of the gradient of the Gaussian-smoothed loss E_ε L(φ + σ ε), exactly ∇L for a quadratic.
It needs no backward pass, so the horizon L is read over can be hundreds of segments, whole articles, at the
memory of one segment: the fix for short-horizon bias that truncated meta-BPTT cannot afford.
"""
from __future__ import annotations

import contextlib
from typing import Iterator, Sequence

import torch
from torch import Tensor, nn


def antithetic_directions(dim: int, pairs: int, generator: torch.Generator) -> Tensor:
    """`[pairs, dim]` standard normal directions; each is read as +ε and −ε."""
    return torch.randn(pairs, dim, generator=generator, dtype=torch.float64)


def es_gradient(directions: Tensor, loss_plus: Tensor, loss_minus: Tensor, sigma: float) -> Tensor:
    """The antithetic estimate `[dim]` from the losses `[pairs]` at φ ± σ ε_i."""
    diff = (loss_plus.to(torch.float64) - loss_minus.to(torch.float64)) / (2.0 * sigma)
    return (diff.unsqueeze(1) * directions).mean(0)


@contextlib.contextmanager
def shifted(params: Sequence[nn.Parameter], delta: Tensor) -> Iterator[None]:
    """φ + δ (a flat `delta` over `params`, in their order) inside the block; φ exactly as it was after it."""
    saved = [p.detach().clone() for p in params]
    offset = 0
    try:
        with torch.no_grad():
            for p in params:
                n = p.numel()
                p.add_(delta[offset:offset + n].view_as(p).to(device=p.device, dtype=p.dtype))
                offset += n
        yield
    finally:
        with torch.no_grad():
            for p, s in zip(params, saved):
                p.copy_(s)


def num_elements(params: Sequence[nn.Parameter]) -> int:
    return sum(p.numel() for p in params)


def assign_flat_grad(params: Sequence[nn.Parameter], flat: Tensor) -> None:
    """`p.grad` from one flat vector over `params` (in their order), for an ordinary optimiser step."""
    offset = 0
    for p in params:
        n = p.numel()
        p.grad = flat[offset:offset + n].view_as(p).to(device=p.device, dtype=p.dtype).clone()
        offset += n


__all__ = ["antithetic_directions", "assign_flat_grad", "es_gradient", "num_elements", "shifted"]
