"""Evolution strategies (`meta.estimator=es`, docs/design.md §"Long horizons"; the maths in `dynamic/es.py`).

The window is read 2P + 1 times without a graph: with φ (whose reading state carries on to the next window, as in
meta-BPTT), and with φ ± σ ε_i for P antithetic directions. Every read of a window sees the same dropout masks
(common random numbers), so L(φ + σε) − L(φ − σε) measures φ, not noise. Memory is that of reading one segment
however long K is.
"""
from __future__ import annotations

from typing import Dict, Tuple

import torch
from omegaconf import DictConfig
from torch import Tensor

from .. import dist
from ..dynamic.es import antithetic_directions, assign_flat_grad, es_gradient, num_elements, shifted
from .estimator_base import Estimator
from .window_reading import ReadWindow, WindowRead, forked_rng


class EvolutionStrategies(Estimator):
    def __init__(self, mc: DictConfig):
        self.pairs, self.sigma = int(mc.es_pairs), float(mc.es_sigma)

    def estimate(self, ml, read: ReadWindow, seed: int) -> Tuple[WindowRead, Dict[str, float]]:
        """The directions are drawn from `seed` (the same on every rank, so the ranks' losses can be summed); the
        dropout masks from one number of this rank's RNG, the same for every read."""
        params = list(ml.learner.parameters())
        directions = antithetic_directions(num_elements(params), self.pairs, torch.Generator().manual_seed(seed))
        masks_seed = int(torch.randint(2**62, (1,)))
        device = next(ml.model.parameters()).device

        def read_shifted(delta: Tensor, with_static: bool) -> WindowRead:
            with forked_rng(device), shifted(params, delta):
                torch.manual_seed(masks_seed)
                return read(with_static)

        window = read_shifted(torch.zeros_like(directions[0]), True)
        losses = [read_shifted(sign * self.sigma * eps, False).per_stream for eps in directions for sign in (1.0, -1.0)]
        sums = dist.sum_floats(*[float(s.sum()) for s in losses])
        streams = window.per_stream.numel() * dist.world_size()
        mean = torch.tensor(sums, dtype=torch.float64).view(self.pairs, 2) / streams
        grad = es_gradient(directions, mean[:, 0], mean[:, 1], self.sigma)
        assign_flat_grad(params, grad)
        return window, {"es/grad_norm": float(grad.norm()), "es/spread": float((mean[:, 0] - mean[:, 1]).abs().mean())}


__all__ = ["EvolutionStrategies"]
