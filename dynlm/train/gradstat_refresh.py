"""Gradient statistics that follow θ0 (`meta.gradstat_refresh`): while stage 2 trains θ0, Krause's statistics are
measured again on the current θ0 every N steps, the way they were first measured (`measure_grad_stats`, on the
same first train tokens: deterministic, so a resume measures the same), and every constant the rule derives from
them is derived again (its `use_stats`). The run's checkpoints store the current ones (`grad_stats`), which a
resume and an evaluation read.
"""
from __future__ import annotations

from typing import Optional

from omegaconf import DictConfig
from torch import nn

from ..config import ConfigValueError
from ..data import Split
from ..run.from_checkpoint import measure_grad_stats_now
from .meta_learning import MetaLearning


def refresh_interval(mc: DictConfig, rule: str, learner: nn.Module) -> Optional[int]:
    """Every how many steps the statistics are measured again (`meta.gradstat_refresh`; None: never). Only while θ0
    trains (set without `meta.train_static`, `config.ONLY_WITH` refuses it), and only for a rule that can take new
    statistics (`use_stats`): a registered rule need not."""
    refresh = mc.gradstat_refresh if mc.train_static else None
    if refresh and not callable(getattr(learner, "use_stats", None)):
        raise ConfigValueError(f"meta.gradstat_refresh={refresh}: rule={rule} cannot take new gradient statistics (it "
                               "has no use_stats method): leave meta.gradstat_refresh unset")
    return refresh


def refresh_grad_stats(ml: MetaLearning, train: Split, step: int) -> None:
    """Measure the statistics of `ml.names` on the current θ0 (`meta.gradstat_refresh_tokens` tokens of `train`,
    else `meta.gradstat_tokens`), and make them those the rule, the validation and the EWC penalty read."""
    mc = ml.meta
    tokens = mc.gradstat_refresh_tokens if mc.gradstat_refresh_tokens is not None else mc.gradstat_tokens
    why = f"step {step}: θ0 has trained since its gradient statistics were measured (meta.gradstat_refresh)"
    ml.stats = measure_grad_stats_now(ml.model, ml.names, train, tokens, mc.gradstat_streams, mc.seg_len, why)
    ml.learner.use_stats(ml.stats)


__all__ = ["refresh_grad_stats", "refresh_interval"]
