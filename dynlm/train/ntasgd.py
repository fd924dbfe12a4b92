"""NT-ASGD (Merity et al. 2017): SGD until validation stalls, then report averaged weights.

The trigger is checked at every validation: if the loss is worse than the best of the losses recorded
more than `nonmono` validations ago, averaging starts. From then on a running mean of the weights is kept;
evaluation and `best.pt` use it (through `functional_call`, so the trained weights are never overwritten).
"""
from __future__ import annotations

from typing import Dict, List, Optional

import torch
from torch import Tensor, nn


class WeightAverager:
    """Running mean of a model's parameters since `start()`; the state lives in the checkpoint."""

    def __init__(self, nonmono: int):
        self.nonmono = nonmono
        self.history: List[float] = []
        self.average: Optional[Dict[str, Tensor]] = None
        self.count = 0

    @property
    def active(self) -> bool:
        return self.average is not None

    def should_trigger(self, valid_loss: float) -> bool:
        """Non-monotone trigger, then record the loss."""
        past = self.history[: max(len(self.history) - self.nonmono, 0)]
        trigger = bool(past) and valid_loss > min(past)
        self.history.append(valid_loss)
        return trigger and not self.active

    def start(self, model: nn.Module) -> None:
        self.average = {n: p.detach().clone() for n, p in model.named_parameters()}
        self.count = 1

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        if self.average is None:
            return
        self.count += 1
        for n, p in model.named_parameters():
            self.average[n].add_(p.detach() - self.average[n], alpha=1.0 / self.count)

    def state_dict(self) -> dict:
        return {"history": list(self.history), "average": self.average, "count": self.count}

    def load_state_dict(self, state: dict, device=None) -> None:
        self.history = list(state["history"])
        average = state["average"]
        self.average = None if average is None else {n: t.to(device) for n, t in average.items()}
        self.count = state["count"]
