"""The explicit reading state of B streams: short-term (h, c), medium-term fast weights, learner state."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, FrozenSet, Mapping

from torch import Tensor

from ..model import LMState, detach_state
from .fast_weights import FastWeights, per_stream, reset_streams, zero_rows


def _same(t: Tensor) -> Tensor:
    return t


@dataclass
class ReadingState:
    lm: LMState  # per layer (h [B, H], c [B, H])
    fast: FastWeights  # name -> [B, *shape]
    # learner state, one row per stream: per coordinate [B, *shape] (a momentum) or per stream [B, k] (a running
    # context); [1, ...] while still at its initial value shared by every stream
    learner: Dict[str, Tensor] = field(default_factory=dict)
    # the fast weights this state's updates and resets made (never θ0's memory): a reading loop that gives them up
    # may have the next update written into them (`adapt_segment(reuse_weights=True)`)
    owned: FrozenSet[str] = frozenset()

    @property
    def batch_size(self) -> int:
        return self.lm[0][0].shape[0]

    def detach(self) -> ReadingState:
        """Truncation point of meta-BPTT: nothing before here receives gradient."""
        return ReadingState(
            detach_state(self.lm),
            {n: t.detach() for n, t in self.fast.items()},
            {n: t.detach() for n, t in self.learner.items()},
            self.owned,
        )

    def follow(self, theta0: Mapping[str, Tensor]) -> ReadingState:
        """The same values, each dynamic weight read as θ0 + (θ − θ0).detach() where θ0 has a graph (θ0 trained
        with the update in the loop): after a truncation (`detach`) θ0's gradient reaches the loss through the
        carried weights again, the memory Δ = θ − θ0 a constant of the window, as truncation makes it."""
        if not any(t.requires_grad for t in theta0.values()):
            return self
        fast = {n: theta0[n] + (t - theta0[n]).detach() if theta0[n].requires_grad else t
                for n, t in self.fast.items()}
        return ReadingState(self.lm, fast, self.learner)  # new tensors with a graph: none owned

    def reset(self, mask: Tensor, theta0: Mapping[str, Tensor]) -> ReadingState:
        """Streams where `mask [B]` is True restart: zero (h, c), θ0 weights, zero learner state."""
        if not bool(mask.any()):
            return self
        lm = [(zero_rows(h, mask), zero_rows(c, mask)) for h, c in self.lm]
        learner = {n: zero_rows(t, mask) for n, t in self.learner.items()}
        return ReadingState(lm, reset_streams(self.fast, theta0, mask), learner, frozenset(self.fast))  # new tensors

    def to_dict(self, rows: Callable[[Tensor], Any] = _same) -> dict:
        """The tensors as a checkpoint holds them: detached, contiguous, each with one row per stream (a learner
        state still at its shared initial value `[1, ...]` is expanded), each passed through `rows` (on several
        ranks, `dist.gather_streams`: the checkpoint is in global stream order)."""
        b = self.batch_size
        return {
            "lm": [(rows(h.detach().contiguous()), rows(c.detach().contiguous())) for h, c in self.lm],
            "fast": {n: rows(t.detach().contiguous()) for n, t in self.fast.items()},
            "learner": {n: rows(t.detach().expand(b, *t.shape[1:]).contiguous()) for n, t in self.learner.items()},
        }

    @staticmethod
    def from_dict(d: dict, device, rows: Callable[[Tensor], Tensor] = _same) -> ReadingState:
        """The inverse of `to_dict`: `rows` first picks this rank's streams (`dist.shard_streams`)."""
        return ReadingState(
            [(rows(h).to(device), rows(c).to(device)) for h, c in d["lm"]],
            {n: rows(t).to(device) for n, t in d["fast"].items()},
            {n: rows(t).to(device) for n, t in d["learner"].items()},
        )


def fresh_state(model, theta0: Mapping[str, Tensor], batch_size: int, learner_state: Dict[str, Tensor]) -> ReadingState:
    return ReadingState(model.init_state(batch_size), per_stream(theta0, batch_size), learner_state)


__all__ = ["ReadingState", "fresh_state"]
