"""What a stage-2 window reads and trains, and how it estimates the meta-gradient."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List

import torch
from omegaconf import DictConfig
from torch import Tensor, nn

from ..dynamic.grad_stats import GradStats
from .estimator_base import Estimator


@dataclass
class MetaLearning:
    """The LM (θ0), the learner (φ), their optimiser, and the estimator of the meta-gradient."""

    meta: DictConfig  # cfg.meta
    model: nn.Module
    learner: nn.Module
    optimizer: torch.optim.Optimizer
    names: List[str]  # the dynamic parameters
    stats: GradStats  # also the diagonal Fisher of the EWC penalty
    anchor: Dict[str, Tensor]  # θ0*, the stage-1 weights (EWC)
    estimator: Estimator

    @property
    def trained_parameters(self) -> List[nn.Parameter]:
        """What the optimiser steps: φ, and θ0 when the estimator trains it."""
        return [p for g in self.optimizer.param_groups for p in g["params"]]


__all__ = ["MetaLearning"]
