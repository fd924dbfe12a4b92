"""The cheap learned rule: Krause's update with a learned step size and decay per (tensor, stream).

    θ' = θ + s_decay · (flush ⊙ θ0 − flush ⊙ θ) − s_step · gain ⊙ g,   gain = η / (rms + ε),  flush = min(λ·decrate, 1)
    (s_step, s_decay)[b, n] = exp(W[:, n] · f[b, n] + c[:, n]),   s_decay capped at 1 / max(flush_n)

The scales come from context every coordinate of a tensor shares (`context_features`), so the only
per-coordinate work is the few elementwise passes of dynamic evaluation plus one norm of g per tensor; W and c
start at zero (s = 1): the untrained rule *is* `DynEvalRule`, bit for bit (the same step, `DynEvalRule.krause_update`,
with scales that are exactly 1). docs/design.md §"The cheap learned rule".
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, Mapping, Sequence, Tuple

import torch
from torch import Tensor, nn

from ..kernels.factored_gradient import FactoredGradient
from .dyneval import DirectionsConfig, DynEvalRule
from .registry import register_rule
from .rule_base import RuleOutput, buffer_name

# The per-stream running context in the learner state: [segments since the last reset, EMA of segment losses].
# ReadingState.reset zeroes it, so a count of 0 *is* the article-boundary signal.
CONTEXT = "context"
LOSS_EMA = 0.9  # the running loss summarises about the last 1 / (1 − 0.9) = 10 segments
NUM_FEATURES = 5
MAX_LOG_SCALE = 10.0  # |log s| cap: a diverging φ gives a large but finite step, never inf


def context_features(seg_loss: Tensor, context: Tensor) -> Tuple[Tensor, Tensor]:
    """`([B, 4] features shared by every tensor, [B, 2] next context)` from the segment loss `[B]` and the
    running context `[B or 1, 2]` (count, loss EMA).

    Features: loss − running mean (nats; 0 on a boundary, where there is no mean yet), running mean / 10 (as the
    gated learner scales ℓ), log(1 + count) / 5 (position in the article), 1 on the first segment after a reset.
    """
    count, ema = context.expand(seg_loss.shape[0], 2).unbind(-1)  # `[1, 2]` at the start: shared by the streams
    fresh = count == 0
    mean = torch.where(fresh, seg_loss, ema)  # the running mean before this segment (this loss on a boundary)
    feats = torch.stack([seg_loss - mean, mean / 10.0, torch.log1p(count) / 5.0, fresh.to(seg_loss.dtype)], dim=-1)
    new_ema = LOSS_EMA * mean + (1.0 - LOSS_EMA) * seg_loss
    return feats, torch.stack([count + 1.0, new_ema], dim=-1)


def grad_norm_features(grads: Sequence[Tensor], log_scale: Tensor) -> Tensor:
    """`[B, tensors]` log(‖g_b‖ / sqrt(Σ v)) / 4: each tensor's gradient in this segment against the statistics'
    typical one (one reduction per tensor; a `FactoredGradient` from its factors). Detached: context, not a
    path for (second-order) meta-gradients."""
    norms = torch.stack([g.norms() if isinstance(g, FactoredGradient) else
                         torch.linalg.vector_norm(g.detach().flatten(1), dim=1) for g in grads], dim=-1)
    return (torch.log(norms + 1e-30) - log_scale).clamp(-20.0, 20.0) / 4.0


@dataclass
class CheapConfig(DirectionsConfig):
    name: str = "cheap"  # Krause's rule, its step size and decay scaled per tensor and stream by a learned model


@register_rule("cheap", config=CheapConfig, learned=True)
class ContextRule(DynEvalRule):
    """Krause's rule whose step size and decay a tiny linear model scales per (tensor, stream), from context.
    The step is dynamic evaluation's (`DynEvalRule.krause_update`, factored gradients included) with the scales."""

    def __init__(self, names, stats, *, eta: float, lam: float, eps: float, momentum_beta: float, delta_decay: float,
                 whiten: bool, whiten_eps: float):
        super().__init__(names, stats, eta=eta, lam=lam, eps=eps, momentum_beta=momentum_beta, delta_decay=delta_decay,
                         whiten=whiten, whiten_eps=whiten_eps)
        n = len(self.names)
        # [2, tensors, features]: row 0 the log step scale, row 1 the log decay scale; zero = dynamic evaluation
        self.weight = nn.Parameter(torch.zeros(2, n, NUM_FEATURES))
        self.bias = nn.Parameter(torch.zeros(2, n))

    def _rule_constants(self, stats) -> None:
        super()._rule_constants(stats)
        # per-tensor constants as buffers (one tensor op per segment, not one per tensor): log sqrt(Σ v), and the
        # cap s_decay ≤ 1 / max flush, which keeps every flush ≤ 1 (θ' between θ and θ0) without a per-coordinate
        # clamp
        log_scale = [0.5 * math.log(float(stats.v[m].double().sum()) + 1e-30) for m in self.names]
        cap = [-math.log(float(self.get_buffer("flush__" + buffer_name(m)).max())) for m in self.names]
        device = stats.v[self.names[0]].device
        self.register_buffer("grad_log_scale", torch.tensor(log_scale, device=device), persistent=False)
        self.register_buffer("log_decay_cap", torch.tensor(cap, device=device), persistent=False)

    def init_learner_state(self, fast: Mapping[str, Tensor]) -> Dict[str, Tensor]:
        like = next(iter(fast.values()))
        return {**super().init_learner_state(fast), CONTEXT: torch.zeros(1, 2, dtype=like.dtype, device=like.device)}

    def scales(self, shared: Tensor, grad_feats: Tensor) -> Tensor:
        """`[2, B, tensors]` (s_step, s_decay) from `shared [B, 4]` and `grad_feats [B, tensors]`."""
        w, c = self.weight, self.bias
        # W[:, n] · [shared, grad_n] + c[:, n]: the shared features are one matmul for every tensor
        shared_part = torch.einsum("bf,knf->kbn", shared, w[..., :-1])
        logits = shared_part + w[..., -1].unsqueeze(1) * grad_feats + c.unsqueeze(1)
        log_s = logits.clamp(-MAX_LOG_SCALE, MAX_LOG_SCALE)
        return torch.stack([log_s[0], torch.minimum(log_s[1], self.log_decay_cap)]).exp()

    def forward(self, fast, grads, theta0, seg_loss, learner_state, inputs=None) -> RuleOutput:
        context = learner_state.get(CONTEXT)
        if context is None:
            context = self.init_learner_state(fast)[CONTEXT]
        shared, new_context = context_features(seg_loss.to(context.dtype), context)
        grad_feats = grad_norm_features([grads[n] for n in self.names], self.grad_log_scale)
        s = self.scales(shared, grad_feats)
        new, state = self.update_all(fast, grads, theta0, learner_state, s_decay=s[1], s_step=s[0], inputs=inputs)
        diag = {"scale/step": s[0].detach().mean(), "scale/decay": s[1].detach().mean()}
        return new, {**state, CONTEXT: new_context.detach()}, diag


__all__ = ["CheapConfig", "ContextRule", "context_features", "grad_norm_features"]
