"""The estimators of the stage-2 meta-gradient, by the name `meta.estimator` gives."""
from __future__ import annotations

from typing import Callable, Dict

from omegaconf import DictConfig

from .bptt_estimator import TruncatedBPTT
from .es_estimator import EvolutionStrategies
from .estimator_base import Estimator
from .first_order_estimator import FirstOrderJoint

ESTIMATORS: Dict[str, Callable[[DictConfig], Estimator]] = {
    "bptt": TruncatedBPTT, "es": EvolutionStrategies, "first_order": FirstOrderJoint,
}


def build_estimator(mc: DictConfig) -> Estimator:
    return ESTIMATORS[mc.estimator](mc)


__all__ = ["ESTIMATORS", "build_estimator"]
