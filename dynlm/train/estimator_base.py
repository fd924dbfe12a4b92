"""The strategy interface of a stage-2 window: how its meta-gradient is estimated.

The window (`meta_window.py`) is the same for every estimator: it hands the estimator a way to read the window,
then checks the gradient and the streams, steps or skips, resets bad streams and reports. An estimator says
- which parameters receive gradients: φ always, and the LM's parameters (θ0) it names in `static_parameters`;
- how each segment is read (`reading`): whether a graph is kept (first or second order) and whether segments are
  checkpointed;
- how the window is read and the gradient formed (`estimate`).
A new estimator is one subclass and one entry of `estimators.ESTIMATORS`.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Dict, List, Tuple

from torch import Tensor, nn

from .. import dist
from .window_reading import ReadWindow, SegmentReading, WindowRead


class Estimator(ABC):
    reading: SegmentReading = SegmentReading()

    def static_parameters(self, model: nn.Module) -> List[nn.Parameter]:
        """The LM's parameters (θ0) this estimator trains beside φ: none unless its gradients reach them. Only these
        require gradients and join the optimiser."""
        return []

    @abstractmethod
    def estimate(self, ml, read: ReadWindow, seed: int) -> Tuple[WindowRead, Dict[str, float]]:
        """Read the window (`read(with_static)`, as often as needed, φ as it is or shifted) and set `.grad` of
        `ml.trained_parameters` to the meta-gradient, the same on every rank (`ml` is the window's `MetaLearning`).
        Returns the read with φ itself and the static model beside it (its state carries on to the next window) and
        the estimator's diagnostics. `seed` is the window's: the same on every rank, fresh at every window, the same
        again on resume."""


def ewc_penalty(model: nn.Module, anchor: Dict[str, Tensor], fisher: Dict[str, Tensor], lam: float) -> Tensor:
    """λ_EWC Σ_i F_i (θ0_i − θ0*_i)² over the parameters `fisher` names (`meta.ewc`)."""
    total = None
    for n, p in model.named_parameters():
        if n in fisher:
            term = (fisher[n] * (p - anchor[n]).pow(2)).sum()
            total = term if total is None else total + term
    return lam * total


def average_over_ranks(params) -> None:
    """Average meta-gradients over ranks (each rank reads different streams)."""
    if not dist.is_distributed():
        return
    for p in params:
        if p.grad is not None:
            dist.all_reduce_sum(p.grad)
            p.grad.div_(dist.world_size())


__all__ = ["Estimator", "average_over_ranks", "ewc_penalty"]
