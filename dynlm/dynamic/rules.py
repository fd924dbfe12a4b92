"""Choosing an update rule by name: Krause's fixed rule (`dyneval.py`) or a learned one (`meta_learner.py`, the
per-coordinate gated learner; `cheap_learner.py`, per-tensor scales of Krause's rule)."""
from __future__ import annotations

from typing import Sequence

from torch import nn

from .cheap_learner import ContextRule
from .dyneval import DynEvalRule
from .grad_stats import GradStats
from .meta_learner import GatedMetaLearner

LEARNED_RULES = ("gated", "cheap")  # the rules with parameters φ: what stage 2 trains and a checkpoint stores


def build_rule(cfg_meta, names: Sequence[str], stats: GradStats, name: str | None = None) -> nn.Module:
    """`meta.name` (or an explicit `name`): gated | cheap | dyneval."""
    kind = name or cfg_meta.name
    common = dict(lr=cfg_meta.lr, lam=cfg_meta.lam, eps=cfg_meta.eps)
    if kind == "dyneval":
        return DynEvalRule(names, stats, update=cfg_meta.update_gate_init, **common)
    if kind == "gated":
        return GatedMetaLearner(
            names, stats, update=cfg_meta.update_gate_init, hidden=cfg_meta.hidden, tensor_emb=cfg_meta.tensor_emb,
            momentum=cfg_meta.momentum, momentum_init=cfg_meta.momentum_init,
            **common,
        )
    if kind == "cheap":
        return ContextRule(names, stats, update=cfg_meta.update_gate_init, **common)
    raise ValueError(f"unknown update rule {kind!r}: use meta=gated, meta=cheap or meta=dyneval")


__all__ = ["ContextRule", "DynEvalRule", "GatedMetaLearner", "LEARNED_RULES", "build_rule"]
