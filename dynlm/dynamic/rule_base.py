"""What both update rules share: one interface, and the constants derived from the gradient statistics.

    new_fast, new_learner_state, diagnostics = rule(fast, grads, theta0, seg_loss, learner_state)

with `fast`, `grads`: name -> `[B, *shape]`, `theta0`: name -> `[*shape]`, `seg_loss`: `[B]`. Work is done
per parameter tensor over all streams and coordinates at once; nothing loops over coordinates or streams.
"""
from __future__ import annotations

from typing import Dict, Mapping, Sequence, Tuple

from torch import Tensor, nn

from .grad_stats import GradStats

RuleOutput = Tuple[Dict[str, Tensor], Dict[str, Tensor], Dict[str, Tensor]]


def buffer_name(name: str) -> str:
    return name.replace(".", "__")


class StatsRule(nn.Module):
    """Shared set-up: the dynamic names, their rms = sqrt(v) and the statistics' scales."""

    def __init__(self, names: Sequence[str], stats: GradStats, lr: float, lam: float, eps: float, update: float):
        super().__init__()
        stats.check_covers(names)
        self.names = list(names)
        self.lr, self.lam, self.eps, self.update_init = lr, lam, eps, update
        self.mean_rms = stats.mean_rms
        self.mean_v = stats.mean_v
        self.decay_norm = stats.decay_norm
        for n in self.names:
            rms = stats.v[n].sqrt()
            # Derived from the statistics, which the checkpoint stores: not part of φ's state dict.
            self.register_buffer("rms__" + buffer_name(n), rms, persistent=False)
            self._extra_buffers(n, rms)

    def _extra_buffers(self, n: str, rms: Tensor) -> None:
        """Further per-coordinate constants derived from the statistics (subclasses)."""

    def rms(self, n: str) -> Tensor:
        return getattr(self, "rms__" + buffer_name(n))

    def init_learner_state(self, fast: Mapping[str, Tensor]) -> Dict[str, Tensor]:
        return {}


__all__ = ["RuleOutput", "StatsRule", "buffer_name"]
