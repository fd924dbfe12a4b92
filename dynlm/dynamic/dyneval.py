"""Krause et al.'s dynamic evaluation as an update rule: the hand-designed baseline of the medium-term memory."""
from __future__ import annotations

import torch
from torch import Tensor

from .rule_base import RuleOutput, StatsRule, buffer_name


class DynEvalRule(StatsRule):
    """Krause et al. (2017): constant gates from the statistics. No learned parameters.

    With constant gates the update folds into θ' = keep·θ + flush·θ0 − a·g, with keep = copy + update and
    a = update·α / (sqrt(v) + ε) computed once: three passes over the weights per segment.
    """

    def _extra_buffers(self, n: str, rms: Tensor) -> None:
        copy, update, flush = self.prior(n).exp().unbind(0)
        alpha = self.lr / self.update_init
        self.register_buffer("keep__" + buffer_name(n), copy + update, persistent=False)
        self.register_buffer("flush__" + buffer_name(n), flush, persistent=False)
        self.register_buffer("gain__" + buffer_name(n), update * alpha / (rms + self.eps), persistent=False)

    def forward(self, fast, grads, theta0, seg_loss, learner_state) -> RuleOutput:
        new = {}
        for n in self.names:
            b = buffer_name(n)
            anchored = getattr(self, "flush__" + b) * theta0[n]
            new[n] = torch.addcmul(anchored, getattr(self, "keep__" + b), fast[n]).addcmul_(
                getattr(self, "gain__" + b), grads[n], value=-1.0)
        return new, learner_state, {}


__all__ = ["DynEvalRule"]
