"""Where a run is, and when it is done: shared by both stages and saved in every checkpoint."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Dict, Optional

from tqdm import tqdm

from .. import dist


@dataclass
class Progress:
    step: int = 0
    epoch: int = 0
    position: int = 0  # stage 1: time index into the batched streams; stage 2: next segment index
    tokens: int = 0
    elapsed: float = 0.0  # seconds of this run so far, over all its sessions
    valid_seconds: float = 0.0  # of which validating: trainer.max_time does not count them
    best_valid_loss: float = math.inf
    extra: Dict[str, Any] = field(default_factory=dict)


def budget_exhausted(trainer_cfg, progress: Progress) -> bool:
    tc = trainer_cfg
    return (
        (tc.max_steps is not None and progress.step >= tc.max_steps)
        or (tc.max_epochs is not None and progress.epoch >= tc.max_epochs)
        or (tc.max_time is not None and progress.elapsed - progress.valid_seconds >= tc.max_time)
    )


def token_bar(total: Optional[int], desc: str, enabled: bool) -> tqdm:
    """The bar of a long pass over tokens (statistics, validation, evaluation); rank 0 only. It disappears
    when done (the pass prints its own one-line summary)."""
    return tqdm(total=total, desc=desc, unit="tok", unit_scale=True, dynamic_ncols=True, leave=False,
                disable=not (enabled and dist.is_main()))
