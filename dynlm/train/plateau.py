"""The plateau schedule of stage 1 (`optim.decay`): decay the learning rate when validation stops improving."""
from __future__ import annotations

import math
from typing import List


class PlateauDecay:
    """After `patience` validations in a row without a new best loss, multiply the learning rate's factor by
    `decay` and start counting again. `decay=1` keeps the learning rate constant."""

    def __init__(self, decay: float, patience: int):
        self.decay, self.patience = decay, patience
        self.scale, self.evals_without_best, self.best = 1.0, 0, math.inf

    def update(self, loss: float) -> bool:
        """Record a validation loss; True when the learning rate just decayed."""
        if loss < self.best:
            self.best, self.evals_without_best = loss, 0
            return False
        self.evals_without_best += 1
        if self.decay < 1.0 and self.evals_without_best >= self.patience:
            self.scale *= self.decay
            self.evals_without_best = 0
            return True
        return False

    def state_dict(self) -> List[float]:
        return [self.scale, self.evals_without_best, self.best]

    def load_state_dict(self, state: List[float]) -> None:
        self.scale, self.evals_without_best, self.best = float(state[0]), int(state[1]), float(state[2])
