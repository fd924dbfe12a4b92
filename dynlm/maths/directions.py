"""Update directions beyond Krause's (issue #25), options of his rule; each is off at 0 and the step is then his.

Momentum across segments (β): the step direction gain ⊙ g (η / (rms + ε) ⊙ g, scaled per stream by the cheap
rule) accumulates, per stream,

    m' = β m + s_step · gain ⊙ g,    θ' = θ + s_decay · (flush ⊙ θ0 − flush ⊙ θ) − m'

so a direction the text keeps pushing gets up to 1 / (1 − β) times Krause's step, one it pushes once is spread
over the next segments; β = 0 is Krause's step (m' is then the step itself).
"""
from __future__ import annotations

from torch import Tensor

from .krause import Scale, krause_step


def momentum_direction(m: Tensor, step: Tensor, beta: float) -> Tensor:
    """m' = β m + step: the momentum after a segment whose own step (s_step · gain ⊙ g) is `step`."""
    return beta * m + step


def momentum_step(theta: Tensor, anchored: Tensor, flush: Tensor, m: Tensor, s_decay: Scale = 1.0) -> Tensor:
    """θ + s_decay · (anchored − flush ⊙ θ) − m: Krause's decay with the momentum `m` as the step."""
    return krause_step(theta, anchored, flush, 1.0, m, s_decay, 1.0)


__all__ = ["momentum_direction", "momentum_step"]
