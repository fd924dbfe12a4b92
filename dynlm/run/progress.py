"""Where a run is, and when it is done: shared by both stages and saved in every checkpoint."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

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
    finished: bool = False  # the final validation is done: resuming with the same budget has nothing to do
    extra: Dict[str, Any] = field(default_factory=dict)


def budget_exhausted(trainer_cfg, progress: Progress) -> bool:
    return bool(limits_reached(trainer_cfg, progress))


def limits_reached(trainer_cfg, progress: Progress) -> List[str]:
    """The trainer limits `progress` has reached, as the keys that set them ("trainer.max_steps=12")."""
    tc = trainer_cfg
    done = {
        "max_steps": tc.max_steps is not None and progress.step >= tc.max_steps,
        "max_epochs": tc.max_epochs is not None and progress.epoch >= tc.max_epochs,
        "max_time": tc.max_time is not None and progress.elapsed - progress.valid_seconds >= tc.max_time,
    }
    return [f"trainer.{key}={getattr(tc, key)}" for key, hit in done.items() if hit]


def token_bar(total: Optional[int], desc: str, enabled: bool) -> tqdm:
    """The bar of a long pass over tokens (statistics, validation, evaluation); rank 0 only. It disappears
    when done (the pass prints its own one-line summary)."""
    return tqdm(total=total, desc=desc, unit="tok", unit_scale=True, dynamic_ncols=True, leave=False,
                disable=not (enabled and dist.is_main()))
