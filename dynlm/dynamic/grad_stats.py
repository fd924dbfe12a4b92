"""The mean squared gradient v_i of every dynamic coordinate, measured once on training data.

It normalises the update (ĝ = g / (sqrt(v) + ε)), sets Krause's decay rates, and is the diagonal Fisher of
the EWC penalty. Gradients are those the reader will see: of one stream's mean loss over one segment, taken
per stream (each stream reads with its own copy of the weights, so one backward gives B gradients).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Mapping, Sequence

import torch
from torch import Tensor, nn

from .. import dist
from ..model import detach_state, static_weights
from .fast_weights import per_stream, requiring_grad, zero_rows
from .segment import segment_losses


@dataclass
class GradStats:
    v: Dict[str, Tensor]  # name -> mean squared gradient, shape of the parameter
    tokens: int

    @property
    def mean_v(self) -> float:
        total = sum(float(t.double().sum()) for t in self.v.values())
        return total / sum(t.numel() for t in self.v.values())

    @property
    def mean_rms(self) -> float:
        total = sum(float(t.double().sqrt().sum()) for t in self.v.values())
        return total / sum(t.numel() for t in self.v.values())

    def state_dict(self) -> dict:
        return {"v": {n: t.detach().cpu() for n, t in self.v.items()}, "tokens": self.tokens}

    @staticmethod
    def from_state_dict(d: Mapping, device=None) -> "GradStats":
        return GradStats({n: t.to(device) for n, t in d["v"].items()}, int(d["tokens"]))

    def check_covers(self, names: Sequence[str]) -> None:
        missing = [n for n in names if n not in self.v]
        if missing:
            raise ValueError(
                f"the saved gradient statistics do not cover dynamic parameters {missing}; "
                "they are recomputed when meta.dynamic changes (delete 'grad_stats' from the checkpoint)"
            )


def measure_grad_stats(model: nn.Module, names: Sequence[str], streams, max_tokens: int) -> GradStats:
    """The statistics of the B global streams of `streams` (a `MetaStreams`) on at least `max_tokens` tokens.

    Every rank measures the same number of segment batches on its own streams, then the (equally weighted)
    means are averaged over ranks; one process reads all B streams itself.
    """
    batch_tokens = streams.seg_len * streams.num_streams
    n_batches = -(-max_tokens // batch_tokens)
    stats = _measure_local(model, names, streams, n_batches * streams.seg_len * streams.num_local_streams)
    if dist.is_distributed():
        for t in stats.v.values():
            dist.all_reduce_sum(t).div_(dist.world_size())
        stats = GradStats(stats.v, stats.tokens * dist.world_size())
    return stats


def _measure_local(model: nn.Module, names: Sequence[str], streams, max_tokens: int) -> GradStats:
    """Mean of g² over segments and this rank's streams of `streams`, static weights, eval mode."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    theta0 = {n: t.detach() for n, t in static_weights(model, names).items()}
    sums = {n: torch.zeros_like(t) for n, t in theta0.items()}
    count, tokens, k = 0, 0, 0
    lm_state = None
    try:
        while tokens < max_tokens:
            batch = streams.batch(k)
            k += 1
            x, y = batch.x.to(device), batch.y.to(device)
            b = x.shape[1]
            if lm_state is None:
                lm_state = model.init_state(b)
            new = batch.new_article.to(device)
            lm_state = [(zero_rows(h, new), zero_rows(c, new)) for h, c in lm_state]
            fast = requiring_grad(per_stream(theta0, b))
            with torch.enable_grad():
                losses, _, lm_state = segment_losses(model, fast, lm_state, x, y)
                grads = torch.autograd.grad(losses.sum(), list(fast.values()))
            for n, g in zip(fast, grads):
                sums[n] += g.detach().pow(2).sum(0)
            lm_state = detach_state(lm_state)
            count += b
            tokens += x.numel()
    finally:
        model.train(was_training)
    return GradStats({n: s / count for n, s in sums.items()}, tokens)
