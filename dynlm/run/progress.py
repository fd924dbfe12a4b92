"""Where a run is, and when it is done: shared by both stages and saved in every checkpoint."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional

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


StepsForEpochs = Callable[[Progress, int], float]


class TrainBar:
    """The training bar (rank 0): steps against the step budget, with an ETA and the loss from the first step.

    The total is `trainer.max_steps`, or the step at which `trainer.max_epochs` ends when that comes first
    (`steps_for_epochs(progress, epochs)`: exact in stage 2, an expectation in stage 1, whose steps read random
    lengths; re-estimated at every step, so it converges on the true count). With only `trainer.max_time`, the
    bar counts seconds of training (validation excluded, as the budget counts them) against it. With a step
    budget and max_time both set, the bar counts steps: it stops short if the time runs out first.
    """

    def __init__(self, trainer_cfg, progress: Progress, steps_for_epochs: StepsForEpochs, desc: str, enabled: bool):
        self.tc, self.steps_for_epochs = trainer_cfg, steps_for_epochs
        self._postfix: Dict[str, str] = {}
        self.seconds = trainer_cfg.max_steps is None and trainer_cfg.max_epochs is None and \
            trainer_cfg.max_time is not None
        unit = dict(unit="s", bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f}s of training "
                    "[{elapsed}<{remaining}{postfix}]") if self.seconds else dict(unit="step")
        self.bar = tqdm(total=self._total(progress), initial=self._count(progress), desc=desc, dynamic_ncols=True,
                        disable=not (enabled and dist.is_main()), **unit)

    def _count(self, p: Progress) -> float:
        return min(p.elapsed - p.valid_seconds, self.tc.max_time) if self.seconds else p.step

    def _total(self, p: Progress) -> Optional[float]:
        tc = self.tc
        if self.seconds:
            return float(tc.max_time)
        totals = [tc.max_steps] if tc.max_steps is not None else []
        if tc.max_epochs is not None:
            totals.append(max(round(self.steps_for_epochs(p, tc.max_epochs)), p.step))
        return min(totals) if totals else None

    def advance(self, p: Progress, postfix: Optional[Dict[str, str]] = None) -> None:
        """Show `p` (and `postfix`, the task's summary of a new log record)."""
        self.bar.total = self._total(p)
        if budget_exhausted(self.tc, p) and not self.seconds and self.tc.max_epochs is not None \
                and p.epoch >= self.tc.max_epochs:
            self.bar.total = p.step  # the epochs are done: now the count is known
        if postfix is not None:
            self._postfix = postfix
        if postfix is not None or self.seconds:  # a bar of seconds shows the step among its figures
            self.bar.set_postfix({"step": p.step, **self._postfix} if self.seconds else self._postfix, refresh=False)
        self.bar.update(self._count(p) - self.bar.n)

    def close(self) -> None:
        self.bar.close()
