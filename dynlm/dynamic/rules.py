"""Update rules for the dynamic weights: Krause's fixed-gate rule and the learned gated meta-learner.

Both are modules with one interface, so evaluation and meta-training treat them alike:

    new_fast, new_learner_state, diagnostics = rule(fast, grads, theta0, seg_loss, learner_state)

with `fast`, `grads`: name -> `[B, *shape]`, `theta0`: name -> `[*shape]`, `seg_loss`: `[B]`. Work is done
per parameter tensor over all streams and coordinates at once; nothing loops over coordinates or streams.
The learned rule runs its per-coordinate MLP over cache-sized blocks of coordinates (`blockwise.py`): no
intermediate is kept for backward, which recomputes one block at a time.
"""
from __future__ import annotations

import math
from functools import partial
from typing import Dict, Mapping, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .blockwise import blockwise
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
            self._extra_buffers(n, rms)

    def _extra_buffers(self, n: str, rms: Tensor) -> None:
        """Further per-coordinate constants derived from the statistics (subclasses)."""

    def rms(self, n: str) -> Tensor:
        return getattr(self, "rms__" + _buffer_name(n))

    def prior(self, n: str) -> Tensor:
        return getattr(self, "prior__" + _buffer_name(n))

    def init_learner_state(self, fast: Mapping[str, Tensor]) -> Dict[str, Tensor]:
        return {}


class DynEvalRule(_StatsRule):
    """Krause et al. (2017): constant gates from the statistics. No learned parameters.

    With constant gates the update folds into θ' = keep·θ + flush·θ0 − a·g, with keep = copy + update and
    a = update·α / (sqrt(v) + ε) computed once: three passes over the weights per segment.
    """

    def _extra_buffers(self, n: str, rms: Tensor) -> None:
        copy, update, flush = self.prior(n).exp().unbind(0)
        alpha = self.lr / self.update_init
        self.register_buffer("keep__" + _buffer_name(n), copy + update, persistent=False)
        self.register_buffer("flush__" + _buffer_name(n), flush, persistent=False)
        self.register_buffer("gain__" + _buffer_name(n), update * alpha / (rms + self.eps), persistent=False)

    def forward(self, fast, grads, theta0, seg_loss, learner_state) -> RuleOutput:
        new = {}
        for n in self.names:
            b = _buffer_name(n)
            anchored = getattr(self, "flush__" + b) * theta0[n]
            new[n] = torch.addcmul(anchored, getattr(self, "keep__" + b), fast[n]).addcmul_(
                getattr(self, "gain__" + b), grads[n], value=-1.0)
        return new, learner_state, {}


class GatedMetaLearner(_StatsRule):
    """COPY / UPDATE / FLUSH gates from a small MLP shared by every coordinate (coordinate sharing).

    gates = softmax(prior + MLP_φ(x_i)): the prior is Krause's rule in log-gate form and the MLP's last
    layer starts at zero, so the untrained learner *is* dynamic evaluation and training moves away from it.

    `features` / `gates` / `reference_update` spell the maths out with whole-tensor ops; `forward` computes
    the same thing over cache-sized blocks of coordinates (`_gated_block`), keeping nothing but its inputs
    for backward (which recomputes block by block). The rule's own activations therefore never need
    checkpointing, whatever `use_checkpoint` says.
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

    def _extra_buffers(self, n: str, rms: Tensor) -> None:
        # the two features that depend on the statistics only, flattened: drift scale and log(v / mean v) / 10
        b = _buffer_name(n)
        self.register_buffer("drift__" + b, (rms / (self.mean_rms * self.lr)).reshape(-1), persistent=False)
        log_v = (2.0 * torch.log(rms.clamp_min(1e-20)) - math.log(self.mean_v)) / 10.0
        self.register_buffer("logv__" + b, log_v.reshape(-1), persistent=False)

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
        b = _buffer_name(n)
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


class _Asinh(torch.autograd.Function):
    """asinh from log1p and sqrt: ATen's CPU asinh is not vectorised (measured 17 ns/element against
    about 3 for these ops), and the meta-learner takes two per coordinate.

    asinh|x| = log1p(|x| + |x|² / (1 + sqrt(1 + |x|²))), exact to a few ulp; log(2|x|) beyond 1e15, where
    |x|² would lose the 1 (and overflow from 1.8e19 in float32).
    """

    @staticmethod
    def forward(ctx, x):
        ax = x.abs()
        sq = ax * ax
        y = torch.log1p(ax + sq / (1.0 + torch.sqrt(sq + 1.0)))
        y = torch.where(ax > 1e15, torch.log(ax) + math.log(2.0), y)
        ctx.save_for_backward(x)
        return y.copysign_(x)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * torch.rsqrt(x * x + 1.0)


def fast_asinh(x: Tensor) -> Tensor:
    return _Asinh.apply(x)


class _TransposedLinear(torch.autograd.Function):
    """`w @ h^T` for `h [N, k]`, `w [m, k]` -> `[m, N]`, whose backward returns a contiguous `[N, k]` gradient
    (autograd's own would be a transposed view, and the sigmoid backward behind it ~5x slower)."""

    @staticmethod
    def forward(ctx, h, w):
        ctx.save_for_backward(h, w)
        return torch.mm(w, h.t())

    @staticmethod
    def backward(ctx, grad):
        h, w = ctx.saved_tensors
        d_h = torch.mm(grad.t(), w) if ctx.needs_input_grad[0] else None
        d_w = torch.mm(grad, h) if ctx.needs_input_grad[1] else None
        return d_h, d_w


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
    logits = _TransposedLinear.apply(hidden.view(B * d, -1), w2).view(3, B, d)
    logits = logits + (prior.unsqueeze(1) + b2.view(3, 1, 1))
    copy, update, flush = torch.softmax(logits, dim=0).unbind(0)
    direction = ghat
    if m is not None:
        direction = beta * m + ghat
    new = gated_update(theta, theta0, alpha * direction, copy, update, flush)
    outs = (new,) if m is None else (new, direction)
    return outs, (torch.stack([copy.sum(), update.sum(), flush.sum()]),)


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
