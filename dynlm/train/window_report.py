"""What both meta-gradient estimators of stage 2 share: what a window trains (`MetaLearning`), the report of one
window, and the static model's loss on the same segments (the baseline of `meta/improvement`)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List

import torch
from omegaconf import DictConfig
from torch import Tensor, nn

from ..dynamic.fast_weights import zero_rows
from ..dynamic.grad_stats import GradStats
from ..model import detach_state, token_nll


@dataclass
class MetaLearning:
    """What a meta-training window reads and trains: the LM (θ0), the learner (φ), their optimiser."""

    meta: DictConfig  # cfg.meta
    model: nn.Module
    learner: nn.Module
    optimizer: torch.optim.Optimizer
    names: List[str]  # the dynamic parameters
    stats: GradStats  # also the diagonal Fisher of the EWC penalty
    anchor: Dict[str, Tensor]  # θ0*, the stage-1 weights (EWC)


@dataclass
class WindowReport:
    meta_loss: float  # mean segment loss over the finite streams of all ranks
    static_loss: float  # the static model on the same tokens
    skipped: int  # 0, or (when the update was skipped) the number of reset streams, at least 1
    reset_streams: int  # streams whose weights or loss were non-finite, restarted from θ0
    tokens: int  # over all ranks
    diag: Dict[str, float]  # the learner's diagnostics (mean gates, step sizes)


def static_segment_loss(model, x, y, lm_state, new_article):
    """The static model's mean loss on a segment, reading with its own (h, c)."""
    lm_state = [(zero_rows(h, new_article), zero_rows(c, new_article)) for h, c in lm_state]
    out = model(x, lm_state)
    return token_nll(out.logits, y).mean(), detach_state(out.state)


__all__ = ["MetaLearning", "WindowReport", "static_segment_loss"]
