"""What one stage-2 window reports, whatever its estimator."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict


@dataclass
class WindowReport:
    meta_loss: float  # mean segment loss over the finite streams of all ranks
    static_loss: float  # the static model on the same tokens
    skipped: int  # 0, or (when the update was skipped) the number of reset streams, at least 1
    reset_streams: int  # streams whose weights or loss were non-finite, restarted from θ0
    tokens: int  # over all ranks
    diag: Dict[str, float]  # the learner's diagnostics (mean gates, step sizes) and the estimator's


__all__ = ["WindowReport"]
