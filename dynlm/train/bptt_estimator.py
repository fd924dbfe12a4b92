"""Truncated meta-BPTT (`meta.estimator=bptt`, docs/design.md §4): backpropagate the window's mean loss through
its K segments' reads and updates to φ (and, with `meta.train_static`, to θ0 under the EWC penalty). The window
then detaches the reading state: the truncation that keeps memory flat however long an article is."""
from __future__ import annotations

from typing import Dict, List, Tuple

from omegaconf import DictConfig
from torch import nn

from .estimator_base import Estimator, average_over_ranks, ewc_penalty
from .window_reading import ReadWindow, SegmentReading, WindowRead


class TruncatedBPTT(Estimator):
    def __init__(self, mc: DictConfig):
        self.reading = SegmentReading(keep_graph=True, second_order=bool(mc.second_order),
                                      checkpoint=bool(mc.checkpoint_segments))
        self.train_static = bool(mc.train_static)
        self.ewc = float(mc.ewc) if self.train_static else 0.0  # the penalty is on θ0, trained only then

    def static_parameters(self, model: nn.Module) -> List[nn.Parameter]:
        return list(model.parameters()) if self.train_static else []

    def estimate(self, ml, read: ReadWindow, seed: int) -> Tuple[WindowRead, Dict[str, float]]:
        window = read(True)
        total = window.per_stream.mean()
        if self.train_static and self.ewc > 0:
            total = total + ewc_penalty(ml.model, ml.anchor, ml.stats.v, self.ewc)
        total.backward()
        average_over_ranks(ml.trained_parameters)
        return window, {}


__all__ = ["TruncatedBPTT"]
