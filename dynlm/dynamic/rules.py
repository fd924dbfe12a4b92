"""Update rules for the dynamic weights: Krause's fixed-gate rule and the learned gated meta-learner.

Both are modules with one interface, so evaluation and meta-training treat them alike:

    new_fast, new_learner_state, diagnostics = rule(fast, grads, theta0, seg_loss, learner_state)

with `fast`, `grads`: name -> `[B, *shape]`, `theta0`: name -> `[*shape]`, `seg_loss`: `[B]`. Work is done
per parameter tensor over all streams and coordinates at once; nothing loops over coordinates or streams.
"""
from __future__ import annotations

import math
from typing import Dict, Mapping, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from .gated_update import gated_update, krause_gate_logits, normalized_grad
from .grad_stats import GradStats

RuleOutput = Tuple[Dict[str, Tensor], Dict[str, Tensor], Dict[str, Tensor]]


def _buffer_name(name: str) -> str:
    return name.replace(".", "__")


class _StatsRule(nn.Module):
    """Shared set-up: the dynamic names, their rms = sqrt(v) and Krause's prior gate logits."""

    def __init__(self, names: Sequence[str], stats: GradStats, lr: float, lam: float, eps: float, update: float):
        super().__init__()
        stats.check_covers(names)
        self.names = list(names)
        self.lr, self.lam, self.eps, self.update_init = lr, lam, eps, update
        self.mean_rms = stats.mean_rms
        self.mean_v = stats.mean_v
        for n in self.names:
            rms = stats.v[n].sqrt()
            # Derived from the statistics, which the checkpoint stores: not part of φ's state dict.
            self.register_buffer("rms__" + _buffer_name(n), rms, persistent=False)
            self.register_buffer(
                "prior__" + _buffer_name(n), krause_gate_logits(rms, self.mean_rms, lam, update), persistent=False
            )

    def rms(self, n: str) -> Tensor:
        return getattr(self, "rms__" + _buffer_name(n))

    def prior(self, n: str) -> Tensor:
        return getattr(self, "prior__" + _buffer_name(n))

    def init_learner_state(self, fast: Mapping[str, Tensor]) -> Dict[str, Tensor]:
        return {}


class DynEvalRule(_StatsRule):
    """Krause et al. (2017): constant gates from the statistics. No learned parameters."""

    def forward(self, fast, grads, theta0, seg_loss, learner_state) -> RuleOutput:
        alpha = self.lr / self.update_init
        new = {}
        for n in self.names:
            copy, update, flush = self.prior(n).exp().unbind(0)
            step = alpha * normalized_grad(grads[n], self.rms(n), self.eps)
            new[n] = gated_update(fast[n], theta0[n], step, copy, update, flush)
        return new, learner_state, {}


class GatedMetaLearner(_StatsRule):
    """COPY / UPDATE / FLUSH gates from a small MLP shared by every coordinate (coordinate sharing).

    gates = softmax(prior + MLP_φ(x_i)): the prior is Krause's rule in log-gate form and the MLP's last
    layer starts at zero, so the untrained learner *is* dynamic evaluation and training moves away from it.
    """

    num_features = 6

    def __init__(
        self,
        names: Sequence[str],
        stats: GradStats,
        lr: float = 0.002,
        lam: float = 0.02,
        eps: float = 0.001,
        update: float = 0.5,
        hidden: int = 16,
        tensor_emb: int = 4,
        momentum: bool = False,
        momentum_init: float = 0.5,
        use_checkpoint: bool = False,
    ):
        super().__init__(names, stats, lr, lam, eps, update)
        self.use_checkpoint = use_checkpoint
        self.momentum = momentum
        self.log_alpha = nn.Parameter(torch.full((len(self.names),), math.log(lr / update)))
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

    def features(self, n: str, theta: Tensor, theta0: Tensor, g: Tensor, seg_loss: Tensor) -> Tensor:
        """`[B, *shape, 6]`: ĝ, log|g|, sign g (Andrychowicz et al.), drift from θ0, log(v / mean v), ℓ_s."""
        rms = self.rms(n)
        ghat = normalized_grad(g, rms, self.eps)
        drift = (theta - theta0) * (rms / (self.mean_rms * self.lr))  # in units of typical update steps
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

    def _update_tensor(self, k: int, n: str, theta, theta0, g, seg_loss, m):
        copy, update, flush = self.gates(k, n, theta, theta0, g, seg_loss).unbind(0)
        direction = normalized_grad(g, self.rms(n), self.eps)
        if m is not None:
            m = torch.sigmoid(self.momentum_logit) * m + direction
            direction = m
        step = self.log_alpha[k].exp() * direction
        new = gated_update(theta, theta0, step, copy, update, flush)
        return new, m, torch.stack([copy.mean(), update.mean(), flush.mean()])

    def forward(self, fast, grads, theta0, seg_loss, learner_state) -> RuleOutput:
        new, new_state, gate_means = {}, {}, []
        for k, n in enumerate(self.names):
            args = (k, n, fast[n], theta0[n], grads[n], seg_loss, learner_state.get(n))
            if self.use_checkpoint and torch.is_grad_enabled():
                out = checkpoint(self._update_tensor, *args, use_reentrant=False)
            else:
                out = self._update_tensor(*args)
            new[n], m, means = out
            if m is not None:
                new_state[n] = m
            gate_means.append(means.detach())
        g = torch.stack(gate_means).mean(0)
        diag = {"gate/copy": g[0], "gate/update": g[1], "gate/flush": g[2]}
        for k, n in enumerate(self.names):
            diag[f"alpha/{n}"] = self.log_alpha[k].detach().exp()
        return new, new_state, diag


def build_rule(cfg_meta, names: Sequence[str], stats: GradStats, name: str | None = None) -> nn.Module:
    """`meta.name` (or an explicit `name`): gated | dyneval."""
    kind = name or cfg_meta.name
    common = dict(lr=cfg_meta.lr, lam=cfg_meta.lam, eps=cfg_meta.eps)
    if kind == "dyneval":
        return DynEvalRule(names, stats, update=cfg_meta.update_gate_init, **common)
    if kind == "gated":
        return GatedMetaLearner(
            names, stats, update=cfg_meta.update_gate_init, hidden=cfg_meta.hidden, tensor_emb=cfg_meta.tensor_emb,
            momentum=cfg_meta.momentum, momentum_init=cfg_meta.momentum_init,
            use_checkpoint=cfg_meta.checkpoint_segments, **common,
        )
    raise ValueError(f"unknown update rule {kind!r}: use meta=gated or meta=dyneval")
