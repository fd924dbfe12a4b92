"""Update directions beyond Krause's (issue #25), options of his rule; each is off at 0 and the step is then his.

Momentum across segments (β): the step direction gain ⊙ g (η / (rms + ε) ⊙ g, scaled per stream by the cheap
rule) accumulates, per stream,

    m' = β m + s_step · gain ⊙ g,    θ' = θ + s_decay · (flush ⊙ θ0 − flush ⊙ θ) − m'

so a direction the text keeps pushing gets up to 1 / (1 − β) times Krause's step, one it pushes once is spread
over the next segments; β = 0 is Krause's step (m' is then the step itself).

Delta-rule decay (μ), for a matrix θ `[R, C]` that multiplied the segment's inputs U `[L, C]` (rows u_t):

    θ' −= μ (θ − θ0) Uᵀ (U Uᵀ + εI)⁻¹ U

forgets, along the inputs just read, the fraction μ of what the memory θ − θ0 holds there (the projection onto
their span: the delta rule's "erase what this key stored" before the step writes again), and leaves every direction
orthogonal to them alone; Krause's decay acts on every coordinate at every segment instead. ε = `DELTA_RIDGE` × the
inputs' mean squared norm keeps a segment that reads one input twice invertible (its directions then shrink a
little less than μ). Rank L: from U alone, two products with θ (`delta_forget_factors`), never the `[C, C]`
projection that `delta_forget` forms.

Input-side whitening, for a matrix whose inputs have the second moment A = E[u uᵀ] (measured with the gradient
statistics): the step reads G (Â + εI)⁻¹ instead of G, Â = A / (tr A / C) normalised to mean eigenvalue 1 so that
Krause's η keeps its range. A gradient D U becomes D (U (Â + εI)⁻¹): directions the inputs seldom take are
stepped up to 1/ε times more, the common ones less (natural-gradient style, on the input side only).
"""
from __future__ import annotations

from typing import Tuple

import torch
from torch import Tensor

from .krause import Scale, krause_step


def momentum_direction(m: Tensor, step: Tensor, beta: float) -> Tensor:
    """m' = β m + step: the momentum after a segment whose own step (s_step · gain ⊙ g) is `step`."""
    return beta * m + step


def momentum_step(theta: Tensor, anchored: Tensor, flush: Tensor, m: Tensor, s_decay: Scale = 1.0) -> Tensor:
    """θ + s_decay · (anchored − flush ⊙ θ) − m: Krause's decay with the momentum `m` as the step."""
    return krause_step(theta, anchored, flush, 1.0, m, s_decay, 1.0)


DELTA_RIDGE = 1e-3


def ridged_inputs(u: Tensor, ridge: float = DELTA_RIDGE) -> Tensor:
    """K = (U Uᵀ + εI)⁻¹ U `[B, L, C]` for inputs `u [B, L, C]`, ε = `ridge` × the mean of diag(U Uᵀ) per stream."""
    gram = u @ u.transpose(1, 2)
    eps = ridge * gram.diagonal(dim1=1, dim2=2).mean(-1) + torch.finfo(u.dtype).tiny
    eye = torch.eye(u.shape[1], dtype=u.dtype, device=u.device)
    return torch.linalg.solve(gram + eps.view(-1, 1, 1) * eye, u)


def delta_forget(theta: Tensor, theta0: Tensor, u: Tensor, mu: float) -> Tensor:
    """μ (θ − θ0) Uᵀ (U Uᵀ + εI)⁻¹ U for `θ [B, R, C]`, `θ0 [R, C]`, `u [B, L, C]`: what the decay takes off θ
    (the reference, forming the `[B, C, C]` projection)."""
    return mu * (theta - theta0) @ (u.transpose(1, 2) @ ridged_inputs(u))


def delta_forget_factors(theta: Tensor, theta0: Tensor, u: Tensor, mu: float) -> Tuple[Tensor, Tensor]:
    """`(A [B, R, L], K [B, L, C])` with A K = `delta_forget(θ, θ0, u, μ)`: A = μ (θ Uᵀ − θ0 Uᵀ), K = (U Uᵀ + εI)⁻¹ U.
    A reads θ, so it is taken before a step that may write into θ's memory."""
    ut = u.transpose(1, 2)
    return mu * (theta @ ut - theta0 @ ut), ridged_inputs(u)


def whitening(moment: Tensor, eps: float) -> Tensor:
    """(Â + εI)⁻¹ `[C, C]`, Â = `moment` / its mean eigenvalue (tr / C)."""
    normalised = moment * (moment.shape[0] / moment.diagonal().sum())
    return torch.linalg.inv(normalised + eps * torch.eye(moment.shape[0], dtype=moment.dtype, device=moment.device))


def whiten(g: Tensor, inverse: Tensor) -> Tensor:
    """G (Â + εI)⁻¹ for a dense per-stream gradient `[B, R, C]` (a factored one: `FactoredGradient.times`)."""
    return g @ inverse


__all__ = ["DELTA_RIDGE", "delta_forget", "delta_forget_factors", "momentum_direction", "momentum_step",
           "ridged_inputs", "whiten", "whitening"]
