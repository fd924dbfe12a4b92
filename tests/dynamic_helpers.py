"""Small builders shared by the dynamical-LM tests."""
from __future__ import annotations

from typing import List, Sequence

import torch

from dynlm.config import ModelConfig
from dynlm.dynamic.dyneval import DIRECTIONS_OFF, DynEvalRule
from dynlm.dynamic.fast_weights import select_dynamic
from dynlm.dynamic.grad_stats import GradStats
from dynlm.dynamic.meta_learner import GatedMetaLearner
from dynlm.dynamic.reading_state import fresh_state
from dynlm.dynamic.segment import adapt_segment
from dynlm.model import AWDLSTM, build_model, static_weights

VOCAB = 23


def tiny_model(dtype=torch.float32, seed=0, dropout=False) -> AWDLSTM:
    torch.manual_seed(seed)
    p = 0.1 if dropout else 0.0
    sizes = ModelConfig(emb_size=6, hidden_size=8, num_layers=2, dropout=p, dropouth=p, dropouti=p, dropoute=0.0,
                        wdrop=p)
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


# the gated rule's settings in these tests (Krause's old scale: larger steps than his defaults, so that a few tiny
# segments move the weights); `setup`'s keywords replace them
GATED = dict(eta=0.002, lam=0.02, eps=0.001, update_gate_init=0.5, hidden=16, tensor_emb=4, momentum=False,
             momentum_init=0.5)


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


def read_with_resets(model, rule, names, segs, resets, keep_graph=False):
    """Per-segment losses `[S, B]` and the final state; `resets[s]` (`[B]` bool) restarts streams before segment s."""
    theta0 = static_weights(model, names)
    state = fresh_state(model, theta0, segs[0].shape[1],
                        rule.init_learner_state({n: t.unsqueeze(0) for n, t in theta0.items()}))
    losses = []
    for seg, reset in zip(segs, resets):
        state = state.reset(reset, theta0)
        loss, _, state, _ = adapt_segment(model, rule, state, theta0, seg[:-1], seg[1:], keep_graph=keep_graph)
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
    return DynEvalRule(learner.names, stats, eta=learner.eta, lam=learner.lam, eps=learner.eps, **DIRECTIONS_OFF)


def tiny_meta_learning(model=None, dynamic=("layers.*",), eta=0.01, lam=0.02, rule="cheap", **meta):
    """Stage 2's `MetaLearning` for `rule` (η, λ) over the `dynamic` parameters of `model` (default:
    `tiny_model(dropout=True)`; φ in the model's dtype): K = 3 segments of L = 4 tokens, B = 2 streams
    (`RandomStreams`), with the `meta` settings given."""
    from omegaconf import OmegaConf

    from dynlm.config import MetaConfig
    from dynlm.dynamic.rules import rule_config
    from dynlm.train.meta_trainer import build_meta_learning

    model = tiny_model(dropout=True) if model is None else model
    names = select_dynamic(model, dynamic)
    mc = OmegaConf.merge(OmegaConf.structured(MetaConfig), {"window": 3, "seg_len": 4, "batch_size": 2,
                                                            "dynamic": list(dynamic), **meta})
    ml = build_meta_learning(mc, rule_config(rule, like={"eta": eta, "lam": lam}), model, names,
                             random_stats(model, names))
    ml.learner.to(next(model.parameters()).dtype)  # in place: the optimiser keeps the same parameters
    return ml


class RandomStreams:
    """Two streams of random tokens of the tiny vocabulary, a new article every 5 segments (as `MetaStreams`)."""

    def __init__(self, vocab=VOCAB, seg_len=4, batch=2):
        self.g = torch.Generator().manual_seed(3)
        self.ids = torch.randint(0, vocab, (400, seg_len + 1, batch), generator=self.g)

    def batch(self, k):
        from dynlm.data.meta_streams import MetaBatch

        seg = self.ids[k]
        new = torch.full((seg.shape[1],), k % 5 == 0)
        return MetaBatch(seg[:-1], seg[1:], new, torch.zeros(seg.shape[1], dtype=torch.long), torch.zeros(2))
