"""What the built-in update rules share: one interface (`registry.py` states the contract), and the constants
derived from the gradient statistics.

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
    """Shared set-up: the dynamic names, their rms = sqrt(v), the statistics' scales, and Krause's η (step size),
    λ (decay toward θ0) and ε (in g / (rms + ε))."""

    def __init__(self, names: Sequence[str], stats: GradStats, *, eta: float, lam: float, eps: float):
        super().__init__()
        stats.check_covers(names)
        self.names = list(names)
        self.eta, self.lam, self.eps = eta, lam, eps
        self.mean_rms = stats.mean_rms
        self.mean_v = stats.mean_v
        self.decay_norm = stats.decay_norm
        self._anchored = {}  # name -> (θ0 tensor, its version, flush·θ0): see `anchored`
        for n in self.names:
            rms = stats.v[n].sqrt()
            # Derived from the statistics, which the checkpoint stores: not part of φ's state dict.
            self.register_buffer("rms__" + buffer_name(n), rms, persistent=False)
            self._extra_buffers(n, rms)

    def _extra_buffers(self, n: str, rms: Tensor) -> None:
        """Further per-coordinate constants derived from the statistics (subclasses)."""

    def rms(self, n: str) -> Tensor:
        return getattr(self, "rms__" + buffer_name(n))

    def anchored(self, n: str, theta0: Tensor) -> Tensor:
        """flush·θ0 for a rule with a `flush__` buffer: computed once while θ0 is the same unchanged tensor
        (evaluation), every time when θ0 is trained (meta.train_static)."""
        flush = getattr(self, "flush__" + buffer_name(n))
        if theta0.requires_grad:
            return flush * theta0
        cached = self._anchored.get(n)
        fresh = cached is not None and cached[0] is theta0 and cached[1] == theta0._version
        if not fresh or cached[2].device != flush.device:
            cached = (theta0, theta0._version, flush * theta0)
            self._anchored[n] = cached
        return cached[2]

    def init_learner_state(self, fast: Mapping[str, Tensor]) -> Dict[str, Tensor]:
        return {}


__all__ = ["RuleOutput", "StatsRule", "buffer_name"]
