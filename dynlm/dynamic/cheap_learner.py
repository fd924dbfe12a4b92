"""The cheap learned rule: Krause's update with a learned step size and decay per (tensor, stream).

    θ' = θ + s_decay · flush ⊙ (θ0 − θ) − s_step · gain ⊙ g,    gain = η / (rms + ε),  flush = min(λ·decrate, 1)
    (s_step, s_decay)[b, n] = exp(W[:, n] · f[b, n] + c[:, n]),   s_decay capped at 1 / max(flush_n)

The scales come from context every coordinate of a tensor shares (`context_features`), so the only
per-coordinate work is the few elementwise passes of dynamic evaluation plus one norm of g per tensor; W and c
start at zero (s = 1): the untrained rule *is* `DynEvalRule`. docs/design.md §"The cheap learned rule".
"""
from __future__ import annotations

import math
from typing import Dict, Mapping, Sequence, Tuple

import torch
from torch import Tensor, nn

from .gated_update import krause_flush
from .rule_base import RuleOutput, StatsRule, buffer_name
from .factored_gradient import FactoredGradient, krause_factored_step

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


def scaled_krause_update(theta: Tensor, theta0: Tensor, g: Tensor, gain: Tensor, flush: Tensor,
                         s_step: Tensor, s_decay: Tensor) -> Tensor:
    """θ + s_decay · flush ⊙ (θ0 − θ) − s_step · gain ⊙ g, with `s_*` `[B]` and the rest per coordinate."""
    view = (-1,) + (1,) * (theta.dim() - 1)
    pulled = (theta0 - theta).mul_(flush)
    return torch.addcmul(theta, pulled, s_decay.view(view)).addcmul_(gain * g, s_step.view(view), value=-1.0)


def scaled_krause_read(theta: Tensor, anchored: Tensor, g: Tensor, gain: Tensor, flush: Tensor,
                       s_step: Tensor, s_decay: Tensor) -> Tensor:
    """`scaled_krause_update` without a graph, in fewer passes over the weights (evaluation, ES reads), with
    `anchored` = flush ⊙ θ0 computed once: u = flush ⊙ θ0 − flush ⊙ θ, θ' = θ + s_decay · u, then u's memory
    takes gain ⊙ g and θ' −= s_step · u. Four passes where the differentiable form makes five (three for one
    stream on CPU, whose scales can be Python numbers), and no allocation beyond u and θ'."""
    u = torch.addcmul(anchored, flush, theta, value=-1.0)
    if theta.shape[0] == 1 and not theta.is_cuda:  # one stream on CPU: scalars, so three passes in all
        return torch.add(theta, u, alpha=float(s_decay)).addcmul_(gain, g, value=-float(s_step))
    view = (-1,) + (1,) * (theta.dim() - 1)
    new = torch.addcmul(theta, u, s_decay.view(view))
    torch.mul(gain, g, out=u)
    return new.addcmul_(u, s_step.view(view), value=-1.0)


class ContextRule(StatsRule):
    """Krause's rule whose step size and decay a tiny linear model scales per (tensor, stream), from context.
    Reading without a graph, the gradients of the adapting tied table and LSTM matrices come factored
    (`krause_factored_step`)."""

    takes_factored_gradients = True

    # no defaults: the config (`MetaConfig`, through `rules.build_rule`) is their one source
    def __init__(self, names, stats, *, lr: float, lam: float, eps: float, update: float):
        super().__init__(names, stats, lr, lam, eps, update)
        n = len(self.names)
        # [2, tensors, features]: row 0 the log step scale, row 1 the log decay scale; zero = dynamic evaluation
        self.weight = nn.Parameter(torch.zeros(2, n, NUM_FEATURES))
        self.bias = nn.Parameter(torch.zeros(2, n))
        # per-tensor constants as buffers (one tensor op per segment, not one per tensor): log sqrt(Σ v), the cap
        log_scale = [0.5 * math.log(float(stats.v[m].double().sum()) + 1e-30) for m in self.names]
        self.register_buffer("grad_log_scale", torch.tensor(log_scale), persistent=False)
        cap = [self.max_log_decay[m] for m in self.names]
        self.register_buffer("log_decay_cap", torch.tensor(cap), persistent=False)

    def _extra_buffers(self, n: str, rms: Tensor) -> None:
        flush = krause_flush(rms, self.decay_norm, self.lam)
        self.register_buffer("flush__" + buffer_name(n), flush, persistent=False)
        self.register_buffer("gain__" + buffer_name(n), self.lr / (rms + self.eps), persistent=False)
        # s_decay ≤ 1 / max flush keeps every flush ≤ 1 (θ' between θ and θ0) without a per-coordinate clamp
        self.max_log_decay = {**getattr(self, "max_log_decay", {}), n: -math.log(float(flush.max()))}

    def init_learner_state(self, fast: Mapping[str, Tensor]) -> Dict[str, Tensor]:
        like = next(iter(fast.values()))
        return {CONTEXT: torch.zeros(1, 2, dtype=like.dtype, device=like.device)}

    def scales(self, shared: Tensor, grad_feats: Tensor) -> Tensor:
        """`[2, B, tensors]` (s_step, s_decay) from `shared [B, 4]` and `grad_feats [B, tensors]`."""
        w, c = self.weight, self.bias
        # W[:, n] · [shared, grad_n] + c[:, n]: the shared features are one matmul for every tensor
        logits = torch.einsum("bf,knf->kbn", shared, w[..., :-1]) + w[..., -1].unsqueeze(1) * grad_feats + c.unsqueeze(1)
        log_s = logits.clamp(-MAX_LOG_SCALE, MAX_LOG_SCALE)
        return torch.stack([log_s[0], torch.minimum(log_s[1], self.log_decay_cap)]).exp()

    def forward(self, fast, grads, theta0, seg_loss, learner_state) -> RuleOutput:
        context = learner_state.get(CONTEXT)
        if context is None:
            context = self.init_learner_state(fast)[CONTEXT]
        shared, new_context = context_features(seg_loss.to(context.dtype), context)
        grad_feats = grad_norm_features([grads[n] for n in self.names], self.grad_log_scale)
        s = self.scales(shared, grad_feats)
        new = {}
        graph = torch.is_grad_enabled()  # meta-BPTT and θ0 refinement differentiate the update; reading does not
        for k, n in enumerate(self.names):
            b = buffer_name(n)
            gain, flush = getattr(self, "gain__" + b), getattr(self, "flush__" + b)
            if isinstance(grads[n], FactoredGradient):
                new[n] = krause_factored_step(fast[n], flush, self.anchored(n, theta0[n]), gain, grads[n],
                                              s_decay=s[1, :, k], s_step=s[0, :, k])
            elif graph:
                new[n] = scaled_krause_update(fast[n], theta0[n], grads[n], gain, flush, s[0, :, k], s[1, :, k])
            else:
                new[n] = scaled_krause_read(fast[n], self.anchored(n, theta0[n]), grads[n], gain, flush,
                                            s[0, :, k], s[1, :, k])
        diag = {"scale/step": s[0].detach().mean(), "scale/decay": s[1].detach().mean()}
        return new, {**learner_state, CONTEXT: new_context.detach()}, diag


__all__ = ["ContextRule", "context_features", "grad_norm_features", "scaled_krause_read", "scaled_krause_update"]
