"""What the built-in update rules share: one interface (`registry.py` states the contract), and the constants
derived from the gradient statistics.

    new_fast, new_learner_state, diagnostics = rule(fast, grads, theta0, seg_loss, learner_state)

with `fast`, `grads`: name -> `[B, *shape]`, `theta0`: name -> `[*shape]`, `seg_loss`: `[B]`. Work is done
per parameter tensor over all streams and coordinates at once; nothing loops over coordinates or streams.
"""
from __future__ import annotations

from typing import Callable, Dict, Hashable, Mapping, Sequence, Tuple

from torch import Tensor, nn

from .grad_stats import GradStats

RuleOutput = Tuple[Dict[str, Tensor], Dict[str, Tensor], Dict[str, Tensor]]


class FrozenWeights(dict):
    """θ0 (name -> tensor) that its owner promises not to change while it holds this object (a reading loop over
    the static weights), with the products a rule derives from it (e.g. flush ⊙ θ0), each computed once.
    A plain dict θ0 gets them recomputed at every use (θ0 trained, or changed between segments)."""

    def __init__(self, weights: Mapping[str, Tensor]):
        super().__init__(weights)
        self._derived: Dict[Hashable, Tensor] = {}

    def derived(self, key: Hashable, make: Callable[[], Tensor]) -> Tensor:
        if key not in self._derived:
            self._derived[key] = make()
        return self._derived[key]


def buffer_name(name: str) -> str:
    return name.replace(".", "__")


class StatsRule(nn.Module):
    """Shared set-up: the dynamic names, their rms = sqrt(v), the statistics' scales, and Krause's η (step size),
    λ (decay toward θ0) and ε (in g / (rms + ε))."""

    def __init__(self, names: Sequence[str], stats: GradStats, *, eta: float, lam: float, eps: float):
        super().__init__()
        self.names = list(names)
        self.eta, self.lam, self.eps = eta, lam, eps
        self.use_stats(stats)

    def use_stats(self, stats: GradStats) -> None:
        """Derive every constant the rule reads from the statistics `stats`: at construction, and again when they
        are measured anew on a trained θ0 (`meta.gradstat_refresh`). φ (the parameters) is left as it is."""
        stats.check_covers(self.names)
        self.mean_rms = stats.mean_rms
        self.mean_v = stats.mean_v
        self.decay_norm = stats.decay_norm
        for n in self.names:
            rms = stats.v[n].sqrt()
            # Derived from the statistics, which the checkpoint stores: not part of φ's state dict.
            self.register_buffer("rms__" + buffer_name(n), rms, persistent=False)
            self._extra_buffers(n, rms)
        self._rule_constants(stats)

    def _extra_buffers(self, n: str, rms: Tensor) -> None:
        """Further per-coordinate constants derived from the statistics (subclasses)."""

    def _rule_constants(self, stats: GradStats) -> None:
        """Constants derived from the statistics of every tensor at once, after the per-tensor ones (subclasses)."""

    def rms(self, n: str) -> Tensor:
        return getattr(self, "rms__" + buffer_name(n))

    def anchored(self, n: str, theta0: Mapping[str, Tensor]) -> Tensor:
        """flush ⊙ θ0 of tensor `n` for a rule with a `flush__` buffer: once per `FrozenWeights`, at every call for
        any other θ0."""
        flush = getattr(self, "flush__" + buffer_name(n))
        if isinstance(theta0, FrozenWeights):
            # keyed on the flush tensor itself (held by the key): another rule's, or this one's moved, is another
            return theta0.derived(("flush·θ0", n, flush), lambda: flush * theta0[n])
        return flush * theta0[n]

    def init_learner_state(self, fast: Mapping[str, Tensor]) -> Dict[str, Tensor]:
        return {}


__all__ = ["FrozenWeights", "RuleOutput", "StatsRule", "buffer_name"]
