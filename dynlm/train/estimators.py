"""The estimators of the stage-2 meta-gradient, by the name `meta.estimator` gives."""
from __future__ import annotations

from typing import Callable, Dict

from omegaconf import DictConfig

from .bptt_estimator import TruncatedBPTT
from .es_estimator import EvolutionStrategies
from .estimator_base import Estimator

ESTIMATORS: Dict[str, Callable[[DictConfig], Estimator]] = {"bptt": TruncatedBPTT, "es": EvolutionStrategies}


def build_estimator(mc: DictConfig) -> Estimator:
    return ESTIMATORS[mc.estimator](mc)


__all__ = ["ESTIMATORS", "build_estimator"]
