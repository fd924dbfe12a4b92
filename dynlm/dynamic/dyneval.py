"""Krause et al.'s dynamic evaluation as an update rule: the hand-designed baseline of the medium-term memory."""
from __future__ import annotations

from typing import Mapping, Optional

from torch import Tensor

from ..kernels.factored_gradient import FactoredGradient, FactoredStep
from ..kernels.krause_dense import krause_dense_step
from ..maths.krause import krause_flush, krause_gain
from .rule_base import RuleOutput, StatsRule, buffer_name


class DynEvalRule(StatsRule):
    """Krause et al. (2017), as his `dynamiceval.py` computes it. No learned parameters.

        θ' = θ − η g / (rms + ε) + λ · decrate · (θ0 − θ),   decrate = rms / decay_norm, capped at 1/λ

    in the one form every path computes (`maths/krause.py:krause_step`, s = 1):
    θ' = θ + (flush ⊙ θ0 − flush ⊙ θ) − gain ⊙ g with flush = min(λ·decrate, 1) and gain = η / (rms + ε) computed
    once, and flush ⊙ θ0 once per reading of a constant θ0 (`FrozenWeights`). Reading without a graph, the
    gradients of the tied table and the LSTM matrices come factored (`FactoredGradient`) and the step is taken
    without ever forming them (`factored_step`, a `FactoredStep` this rule owns); the others take
    `krause_dense_step`.
    """

    takes_factored_gradients = True

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.factored_step = FactoredStep()  # what it compiled, and whether compiling failed

    def _extra_buffers(self, n: str, rms: Tensor) -> None:
        self.register_buffer("flush__" + buffer_name(n), krause_flush(rms, self.decay_norm, self.lam),
                             persistent=False)
        self.register_buffer("gain__" + buffer_name(n), krause_gain(rms, self.lr, self.eps), persistent=False)

    def krause_update(self, n: str, theta: Tensor, theta0: Mapping[str, Tensor], g,
                      s_decay: Optional[Tensor] = None, s_step: Optional[Tensor] = None) -> Tensor:
        """Krause's step of tensor `n`, scaled per stream by `s_* [B]` (None: 1), whatever form g comes in."""
        b = buffer_name(n)
        flush, gain = getattr(self, "flush__" + b), getattr(self, "gain__" + b)
        if isinstance(g, FactoredGradient):
            return self.factored_step(theta, flush, self.anchored(n, theta0), gain, g, s_decay, s_step)
        return krause_dense_step(theta, self.anchored(n, theta0), flush, gain, g, s_decay, s_step)

    def forward(self, fast, grads, theta0, seg_loss, learner_state) -> RuleOutput:
        return {n: self.krause_update(n, fast[n], theta0, grads[n]) for n in self.names}, learner_state, {}


__all__ = ["DynEvalRule"]
