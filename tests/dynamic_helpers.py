"""Small builders shared by the dynamical-LM tests."""
from __future__ import annotations

from typing import List, Sequence

import torch

from dynlm.dynamic.fast_weights import select_dynamic
from dynlm.dynamic.grad_stats import GradStats
from dynlm.dynamic.reading_state import fresh_state
from dynlm.dynamic.rules import DynEvalRule, GatedMetaLearner
from dynlm.dynamic.segment import adapt_segment
from dynlm.config import ModelConfig
from dynlm.model import AWDLSTM, build_model, static_weights

VOCAB = 23


def tiny_model(dtype=torch.float32, seed=0, dropout=False) -> AWDLSTM:
    torch.manual_seed(seed)
    p = 0.1 if dropout else 0.0
    sizes = ModelConfig(emb_size=6, hidden_size=8, num_layers=2, dropout=p, dropouth=p, dropouti=p, dropoute=0.0, wdrop=p)
    m = build_model(sizes, VOCAB)
    return m.to(dtype)


def random_stats(model, names: Sequence[str], seed=1) -> GradStats:
    g = torch.Generator().manual_seed(seed)
    params = dict(model.named_parameters())
    v = {n: (torch.rand(params[n].shape, generator=g, dtype=params[n].dtype) + 0.05) * 1e-3 for n in names}
    return GradStats(v, tokens=1000)


def tokens(num_segments: int, seg_len: int, batch: int, seed=0) -> List[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    stream = torch.randint(0, VOCAB, (num_segments * seg_len + 1, batch), generator=g)
    return [stream[s * seg_len : (s + 1) * seg_len + 1] for s in range(num_segments)]


# The gated learner of these tests: Krause's rule at steps large enough to move a tiny model in a few segments.
GATED = dict(lr=0.002, lam=0.02, eps=0.001, update=0.5, hidden=16, tensor_emb=4, momentum=False, momentum_init=0.5)


def setup(dtype=torch.float32, dynamic=("layers.*",), **learner_kwargs):
    model = tiny_model(dtype)
    names = select_dynamic(model, dynamic)
    stats = random_stats(model, names)
    learner = GatedMetaLearner(names, stats, **{**GATED, **learner_kwargs}).to(dtype)
    return model, names, stats, learner


def read(model, rule, names, segments, keep_graph=False, second_order=False, use_checkpoint=False, state=None):
    """Read `segments` ([L+1, B] each) adaptively; returns per-segment losses [S, B] and the final state."""
    theta0 = static_weights(model, names)
    b = segments[0].shape[1]
    if state is None:
        state = fresh_state(model, theta0, b, rule.init_learner_state({n: t.unsqueeze(0) for n, t in theta0.items()}))
    losses = []
    for seg in segments:
        loss, _, state, _ = adapt_segment(
            model, rule, state, theta0, seg[:-1], seg[1:], keep_graph=keep_graph,
            second_order=second_order, use_checkpoint=use_checkpoint,
        )
        losses.append(loss)
    return torch.stack(losses), state


def perturb(learner, seed=0, scale=0.3):
    """Move φ off its zero-initialised head so every path of the MLP carries gradient."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in learner.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return learner


def dyneval_for(learner: GatedMetaLearner, stats: GradStats) -> DynEvalRule:
    return DynEvalRule(learner.names, stats, lr=learner.lr, lam=learner.lam, eps=learner.eps, update=learner.update_init)
