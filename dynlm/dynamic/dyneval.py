"""Krause et al.'s dynamic evaluation as an update rule: the hand-designed baseline of the medium-term memory."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Dict, Mapping, Optional, Sequence, Tuple

from torch import Tensor

from ..kernels.factored_gradient import FactoredGradient, FactoredStep
from ..kernels.krause_dense import krause_dense_step
from ..maths.krause import krause_flush, krause_gain
from .grad_stats import GradStats
from .registry import register_rule
from .rule_base import RuleOutput, StatsRule, buffer_name


@dataclass
class KrauseConfig:
    """Krause et al.'s (2017) hyperparameters: of his rule, and the starting point of the rules learned from it.
    Defaults are his dynamiceval.py's (its new hyperparameter scale; docs/dyneval.md "Hyperparameter scales")."""

    eta: float = 0.00005  # η, the step size
    lam: float = 0.002  # λ (decay toward the static weights)
    eps: float = 0.00002  # ε in g / (rms + ε)

    ranges: ClassVar[Dict[str, Tuple]] = {"eta": (0.0, None, False), "lam": (0.0, None, True),
                                          "eps": (0.0, None, False)}


@dataclass
class DynEvalConfig(KrauseConfig):
    name: str = "dyneval"  # Krause's fixed rule


@register_rule("dyneval", config=DynEvalConfig, learned=False)
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

    def __init__(self, names: Sequence[str], stats: GradStats, *, eta: float, lam: float, eps: float):
        super().__init__(names, stats, eta=eta, lam=lam, eps=eps)
        self.factored_step = FactoredStep()  # what it compiled, and whether compiling failed

    def _extra_buffers(self, n: str, rms: Tensor) -> None:
        self.register_buffer("flush__" + buffer_name(n), krause_flush(rms, self.decay_norm, self.lam),
                             persistent=False)
        self.register_buffer("gain__" + buffer_name(n), krause_gain(rms, self.eta, self.eps), persistent=False)

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


__all__ = ["DynEvalConfig", "DynEvalRule", "KrauseConfig"]
