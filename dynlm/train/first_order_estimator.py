"""First-order joint training on the fast reading path (`meta.estimator=first_order`, issue #25).

With each segment's gradient g_s treated as data (first order), the weights a stream reads depend on θ0 with
derivative exactly I: the window's start and every reset read θ0 itself (`ReadingState.follow`, `reset`), and every
built-in step has the form θ' = θ + A(θ0 − θ) − step(g) with A linear (Krause's decay), so
dθ'/dθ0 = (I − A) I + A = I. The first-order gradient of the window's mean loss w.r.t. θ0 is therefore the mean over
segments and streams of the gradients the update already takes, g_s,b = ∂ℓ_s,b/∂θ_s,b: no graph across segments,
one backward per segment (the reading loop's own, factored gradients included), the streams' gradients summed as
one product per matrix (`FactoredGradient.stream_sum`); the weights that do not adapt get theirs in the same
backward. It equals `meta.estimator=bptt meta.second_order=false` (tests/test_joint_first_order.py) at the cost of
reading, with memory flat in K.

The rule must have nothing of its own to train: φ's first-order gradient runs through the chain of updates
(`meta.estimator=bptt`), and ES estimates φ alone (`meta.estimator=es`).
"""
from __future__ import annotations

from typing import Dict, List, Tuple

import torch
from omegaconf import DictConfig
from torch import nn

from .estimator_base import Estimator, average_over_ranks, ewc_penalty
from .window_reading import ReadWindow, SegmentReading, WindowRead


class FirstOrderJoint(Estimator):
    reading = SegmentReading(keep_graph=False, sum_gradients=True)

    def __init__(self, mc: DictConfig):
        self.ewc = float(mc.ewc)

    def static_parameters(self, model: nn.Module) -> List[nn.Parameter]:
        return list(model.parameters())

    def estimate(self, ml, read: ReadWindow, seed: int) -> Tuple[WindowRead, Dict[str, float]]:
        window = read(True)
        # per_stream is the mean over the window's segments; the loss trained is its mean over the local streams
        scale = 1.0 / (ml.meta.window * window.per_stream.numel())
        params = dict(ml.model.named_parameters())
        for n, g in window.gradient_sums.items():
            params[n].grad = g.mul_(scale)
        if self.ewc > 0:
            anchored = [p for n, p in params.items() if n in ml.stats.v]
            penalty = ewc_penalty(ml.model, ml.anchor, ml.stats.v, self.ewc)
            for p, g in zip(anchored, torch.autograd.grad(penalty, anchored)):
                p.grad.add_(g)
        average_over_ranks(ml.trained_parameters)
        return window, {}


__all__ = ["FirstOrderJoint"]
