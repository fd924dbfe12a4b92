"""Krause et al.'s dynamic evaluation as an update rule: the hand-designed baseline of the medium-term memory."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Dict, Tuple

import torch
from torch import Tensor

from .gated_update import krause_flush
from .registry import register_rule
from .rule_base import RuleOutput, StatsRule, buffer_name
from .factored_gradient import FactoredGradient, krause_factored_step


@dataclass
class KrauseConfig:
    """Krause et al.'s (2017) hyperparameters: of his rule, and the starting point of the rules learned from it.
    Defaults are his dynamiceval.py's (its new hyperparameter scale; README "Dynamic evaluation as Krause did it")."""

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

    folded into θ' = keep·θ + flush·θ0 − gain·g with flush = min(λ·decrate, 1), keep = 1 − flush and
    gain = η / (rms + ε) computed once: two passes over the weights per segment. flush·θ0 is computed once too
    while θ0 is constant (evaluation); when θ0 is trained (meta.train_static) it is recomputed every segment.
    Reading without a graph, the gradients of the tied table and the LSTM matrices come factored
    (`FactoredGradient`) and the step is taken without ever forming them (`krause_factored_step`).
    """

    takes_factored_gradients = True

    def _extra_buffers(self, n: str, rms: Tensor) -> None:
        flush = krause_flush(rms, self.decay_norm, self.lam)
        self.register_buffer("keep__" + buffer_name(n), 1.0 - flush, persistent=False)
        self.register_buffer("flush__" + buffer_name(n), flush, persistent=False)
        self.register_buffer("gain__" + buffer_name(n), self.eta / (rms + self.eps), persistent=False)

    def forward(self, fast, grads, theta0, seg_loss, learner_state) -> RuleOutput:
        new = {}
        for n in self.names:
            b = buffer_name(n)
            if isinstance(grads[n], FactoredGradient):
                new[n] = krause_factored_step(fast[n], getattr(self, "flush__" + b), self.anchored(n, theta0[n]),
                                              getattr(self, "gain__" + b), grads[n])
                continue
            new[n] = torch.addcmul(self.anchored(n, theta0[n]), getattr(self, "keep__" + b), fast[n]).addcmul_(
                getattr(self, "gain__" + b), grads[n], value=-1.0)
        return new, learner_state, {}


__all__ = ["DynEvalConfig", "DynEvalRule", "KrauseConfig"]
