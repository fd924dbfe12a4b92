"""The learned meta-learner: COPY / UPDATE / FLUSH gates from a small MLP shared by every coordinate.

It rewrites the medium-term memory (the dynamic weights) segment by segment, and starts out *as* Krause's
dynamic evaluation. Its per-coordinate MLP runs over cache-sized blocks of coordinates (`blockwise.py`): no
intermediate is kept for backward, which recomputes one block at a time.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial
from typing import ClassVar, Dict, Mapping, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..kernels.blockwise import blockwise
from ..kernels.fast_ops import TransposedLinear, fast_asinh
from ..maths.gated import gated_update, normalized_grad
from .dyneval import KrauseConfig
from .gated_update import krause_gate_logits
from .grad_stats import GradStats
from .registry import register_rule
from .rule_base import RuleOutput, StatsRule, buffer_name


@dataclass
class GatedConfig(KrauseConfig):
    name: str = "gated"  # COPY / UPDATE / FLUSH gates per coordinate from a small learned MLP
    update_gate_init: float = 0.5  # the UPDATE gate at initialisation; α starts at η / this
    hidden: int = 16  # width of the coordinate-wise MLP
    tensor_emb: int = 4  # size of the learned embedding of the tensor a coordinate belongs to
    momentum: bool = False  # per-coordinate momentum state (Titans-style)
    momentum_init: float = 0.5  # the momentum coefficient at initialisation

    ranges: ClassVar[Dict[str, Tuple]] = {**KrauseConfig.ranges, "update_gate_init": (0.0, 1.0, False),
                                          "momentum_init": (0.0, 1.0, False)}


@register_rule("gated", config=GatedConfig, learned=True)
class GatedMetaLearner(StatsRule):
    """COPY / UPDATE / FLUSH gates from a small MLP shared by every coordinate (coordinate sharing).

    gates = softmax(prior + MLP_φ(x_i)): the prior is Krause's rule in log-gate form and the MLP's last
    layer starts at zero, so the untrained learner *is* dynamic evaluation and training moves away from it.

    `features` / `gates` / `reference_update` spell the maths out with whole-tensor ops; `forward` computes
    the same thing over cache-sized blocks of coordinates (`_gated_block`), keeping nothing but its inputs
    for backward (which recomputes block by block). The rule's own activations therefore never need
    checkpointing: `meta.checkpoint_segments` concerns the LM's activations only.
    """

    num_features = 6

    def __init__(self, names: Sequence[str], stats: GradStats, *, eta: float, lam: float, eps: float,
                 update_gate_init: float, hidden: int, tensor_emb: int, momentum: bool, momentum_init: float):
        # read by the base's `use_stats` (`_extra_buffers`)
        self.update_init = update_gate_init
        self.update_gate: Dict[str, float] = {}
        super().__init__(names, stats, eta=eta, lam=lam, eps=eps)
        self.momentum = momentum
        # α_k = η / u_k: the UPDATE gate of Krause's rule as gates is per tensor (`krause_gate_logits`)
        self.log_alpha = nn.Parameter(torch.tensor([math.log(eta / self.update_gate[n]) for n in self.names]))
        self.tensor_embedding = nn.Embedding(len(self.names), tensor_emb)
        self.feature_proj = nn.Linear(self.num_features, hidden)
        self.embedding_proj = nn.Linear(tensor_emb, hidden, bias=False)
        self.gate_head = nn.Linear(hidden, 3)
        nn.init.zeros_(self.gate_head.weight)
        nn.init.zeros_(self.gate_head.bias)
        if momentum:
            self.momentum_logit = nn.Parameter(torch.tensor(math.log(momentum_init / (1 - momentum_init))))

    def init_learner_state(self, fast: Mapping[str, Tensor]) -> Dict[str, Tensor]:
        if not self.momentum:
            return {}
        return {n: torch.zeros_like(t) for n, t in fast.items()}

    def prior(self, n: str) -> Tensor:
        return getattr(self, "prior__" + buffer_name(n))

    def _extra_buffers(self, n: str, rms: Tensor) -> None:
        # Krause's rule as prior log-gates, and each tensor's UPDATE gate u (α starts at η / u)
        prior, u = krause_gate_logits(rms, self.decay_norm, self.lam, self.update_init)
        self.update_gate[n] = u
        self.register_buffer("prior__" + buffer_name(n), prior, persistent=False)
        # the two features that depend on the statistics only, flattened: drift scale and log(v / mean v) / 10
        b = buffer_name(n)
        self.register_buffer("drift__" + b, (rms / (self.mean_rms * self.eta)).reshape(-1), persistent=False)
        log_v = (2.0 * torch.log(rms.clamp_min(1e-20)) - math.log(self.mean_v)) / 10.0
        self.register_buffer("logv__" + b, log_v.reshape(-1), persistent=False)

    def features(self, n: str, theta: Tensor, theta0: Tensor, g: Tensor, seg_loss: Tensor) -> Tensor:
        """`[B, *shape, 6]`: ĝ, log|g|, sign g (Andrychowicz et al.), drift from θ0, log(v / mean v), ℓ_s."""
        rms = self.rms(n)
        ghat = normalized_grad(g, rms, self.eps)
        drift = (theta - theta0) * (rms / (self.mean_rms * self.eta))  # in units of typical update steps
        log_v = (2.0 * torch.log(rms.clamp_min(1e-20)) - math.log(self.mean_v)).expand_as(g)
        loss = seg_loss.view(-1, *([1] * (g.dim() - 1))).expand_as(g)
        return torch.stack(
            [torch.asinh(ghat), torch.log(g.abs() + 1e-20) / 10.0, torch.sign(g), torch.asinh(drift),
             log_v / 10.0, loss / 10.0],
            dim=-1,
        )

    def gates(self, k: int, n: str, theta, theta0, g, seg_loss) -> Tensor:
        """`[3, B, *shape]` softmax gates for tensor `n` (index k)."""
        x = self.features(n, theta, theta0, g, seg_loss)
        emb = self.embedding_proj(self.tensor_embedding.weight[k])
        h = torch.tanh(self.feature_proj(x) + emb)
        logits = self.gate_head(h).movedim(-1, 0) + self.prior(n).unsqueeze(1)
        return F.softmax(logits, dim=0)

    def reference_update(self, k: int, n: str, theta, theta0, g, seg_loss, m):
        """The update of tensor `n` from whole-tensor ops (what `_update_tensor` computes blockwise)."""
        copy, update, flush = self.gates(k, n, theta, theta0, g, seg_loss).unbind(0)
        direction = normalized_grad(g, self.rms(n), self.eps)
        if m is not None:
            m = torch.sigmoid(self.momentum_logit) * m + direction
            direction = m
        step = self.log_alpha[k].exp() * direction
        new = gated_update(theta, theta0, step, copy, update, flush)
        return new, m, torch.stack([copy.mean(), update.mean(), flush.mean()])

    def _update_tensor(self, k: int, n: str, theta, theta0, g, seg_loss, m):
        """`reference_update` over blocks of coordinates: `(θ', m', [mean copy, update, flush])`."""
        B, shape = theta.shape[0], theta.shape[1:]
        W1, W2 = self.feature_proj.weight, self.gate_head.weight
        emb = self.embedding_proj(self.tensor_embedding.weight[k])
        # tanh(z) = 2·sigmoid(2z) − 1, folded into the two layers: one sigmoid per hidden unit, no tanh
        w1 = 2.0 * W1[:, :5]  # the per-coordinate features (the sixth, ℓ_s, is per stream: into the bias)
        b1 = 2.0 * (self.feature_proj.bias + emb) + (seg_loss / 10.0).unsqueeze(-1) * (2.0 * W1[:, 5])  # [B, 16]
        w2 = 2.0 * W2
        b2 = self.gate_head.bias - W2.sum(1)
        alpha = self.log_alpha[k].exp()
        beta = torch.sigmoid(self.momentum_logit) if m is not None else None
        b = buffer_name(n)
        sliced = (theta.reshape(B, -1), theta0.reshape(-1), g.reshape(B, -1),
                  None if m is None else m.reshape(m.shape[0], -1), self.rms(n).reshape(-1),
                  getattr(self, "drift__" + b), getattr(self, "logv__" + b), self.prior(n).reshape(3, -1))
        width = sliced[1].numel()
        outs, (gate_sums,) = blockwise(
            partial(_gated_block, self.eps), sliced, (w1, b1, w2, b2, alpha, beta),
            n_out=1 if m is None else 2, width=width, rows=B,
        )
        new_m = outs[1].view(B, *shape) if m is not None else None
        return outs[0].view(B, *shape), new_m, gate_sums / (B * width)

    def forward(self, fast, grads, theta0, seg_loss, learner_state) -> RuleOutput:
        new, new_state, gate_means = {}, {}, []
        for k, n in enumerate(self.names):
            out = self._update_tensor(k, n, fast[n], theta0[n], grads[n], seg_loss, learner_state.get(n))
            new[n], m, means = out
            if m is not None:
                new_state[n] = m
            gate_means.append(means.detach())
        g = torch.stack(gate_means).mean(0)
        diag = {"gate/copy": g[0], "gate/update": g[1], "gate/flush": g[2]}
        for k, n in enumerate(self.names):
            diag[f"alpha/{n}"] = self.log_alpha[k].detach().exp()
        return new, new_state, diag


def _gated_block(eps, theta, theta0, g, m, rms, drift_scale, log_v, prior, w1, b1, w2, b2, alpha, beta):
    """`GatedMetaLearner.reference_update` on a block of d coordinates (`theta`, `g`: `[B, d]`).

    `w1 = 2·W1[:, :5]`, `b1 = 2·(b + emb) + 2·W1[:, 5]·ℓ/10` (`[B, 16]`), `w2 = 2·W2`, `b2 = b − W2·1`:
    the hidden layer tanh(W1 x + b) is computed as 2·sigmoid(2(W1 x + b)) − 1, folded into the weights.
    """
    ghat = g / (rms + eps)
    B, d = ghat.shape
    x = torch.stack([fast_asinh(ghat), torch.log(g.abs() + 1e-20) / 10.0, torch.sign(g),
                     fast_asinh((theta - theta0) * drift_scale), log_v.expand(B, d)], dim=-1)  # [B, d, 5]
    # hidden = sigmoid(x @ w1^T + b1): one batched matmul writes the [B, d, 16] layer once, sigmoid in place
    hidden = torch.baddbmm(b1.unsqueeze(1), x, w1.t().expand(B, -1, -1)).sigmoid_()
    logits = TransposedLinear.apply(hidden.view(B * d, -1), w2).view(3, B, d)
    logits = logits + (prior.unsqueeze(1) + b2.view(3, 1, 1))
    copy, update, flush = torch.softmax(logits, dim=0).unbind(0)
    direction = ghat
    if m is not None:
        direction = beta * m + ghat
    new = gated_update(theta, theta0, alpha * direction, copy, update, flush)
    outs = (new,) if m is None else (new, direction)
    return outs, (torch.stack([copy.sum(), update.sum(), flush.sum()]),)


__all__ = ["GatedConfig", "GatedMetaLearner"]
