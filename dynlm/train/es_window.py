"""Stage 2 with the evolution-strategies estimator (`meta.estimator=es`, docs/design.md §"Long horizons").

One window reads K segments of the B streams 2P + 1 times without a graph: with φ (whose reading state carries on
to the next window, as in meta-BPTT), and with φ ± σ ε_i for P antithetic directions. Every read of a window sees the
same dropout masks (common random numbers), so L(φ + σε) − L(φ − σε) measures φ, not noise. φ steps with Adam on
`es_gradient`; memory is that of reading one segment however long K is.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import torch
from torch import Tensor

from .. import dist
from ..data import MetaStreams
from ..dynamic.es import antithetic_directions, assign_flat_grad, es_gradient, num_elements, shifted
from ..dynamic.fast_weights import finite_streams
from ..dynamic.reading_state import ReadingState
from ..dynamic.segment import adapt_segment
from ..model import LMState, static_weights
from .window_report import MetaLearning, WindowReport, static_segment_loss


def _read_window(ml: MetaLearning, streams: MetaStreams, position: int, state: ReadingState,
                 static_lm: Optional[LMState]):
    """`([b] mean segment loss per stream, state after the window, static state, static losses, diagnostics)`.

    The static model's reading (when `static_lm` is given) draws its dropout masks from a fork of the RNG, so the
    adaptive reading draws the same masks with or without it."""
    model, device = ml.model, next(ml.model.parameters()).device
    theta0 = static_weights(model, ml.names)
    losses: List[Tensor] = []
    static_losses: List[Tensor] = []
    diag: Dict[str, Tensor] = {}
    for k in range(ml.meta.window):
        batch = streams.batch(position + k)
        x, y, new = batch.x.to(device), batch.y.to(device), batch.new_article.to(device)
        state = state.reset(new, theta0)
        if static_lm is not None:
            with torch.no_grad(), torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
                static_loss, static_lm = static_segment_loss(model, x, y, static_lm, new)
            static_losses.append(static_loss)
        seg_loss, _, state, diag = adapt_segment(model, ml.learner, state, theta0, x, y)
        losses.append(seg_loss)
    return torch.stack(losses).mean(0), state, static_lm, static_losses, diag


def es_window(ml: MetaLearning, streams: MetaStreams, position: int, state: ReadingState, static_lm: LMState,
              seed: int) -> Tuple[ReadingState, LMState, WindowReport]:
    """Like `meta_window`, with the antithetic ES estimate of the meta-gradient. `seed` draws the directions: the
    same on every rank (seeded by the run's seed and the position), so the ranks' losses can be summed."""
    mc, model = ml.meta, ml.model
    model.train()  # stage 2 reads with stage 1's dropout
    params = list(ml.learner.parameters())
    directions = antithetic_directions(num_elements(params), mc.es_pairs, torch.Generator().manual_seed(seed))
    masks_seed = int(torch.randint(2**62, (1,)))  # this rank's dropout masks, the same for every read below
    fork = [state.lm[0][0].device] if state.lm[0][0].is_cuda else []

    def read(delta: Tensor, start: ReadingState, lm: Optional[LMState]):
        with torch.random.fork_rng(devices=fork), shifted(params, delta):
            torch.manual_seed(masks_seed)
            return _read_window(ml, streams, position, start, lm)

    per_stream, end_state, static_lm, static_losses, diag = read(torch.zeros_like(directions[0]), state, static_lm)
    shifted_losses = []
    for eps in directions:
        for sign in (1.0, -1.0):
            shifted_losses.append(read(sign * mc.es_sigma * eps, state, None)[0])
    ok = finite_streams(end_state.fast) & torch.isfinite(per_stream)
    b = per_stream.numel()
    sums = dist.sum_floats(
        int((~ok).sum()), float(per_stream[ok].sum()), int(ok.sum()), float(torch.stack(static_losses).mean()),
        *[float(s.sum()) for s in shifted_losses],
    )
    n_bad, meta_sum, meta_count, static_sum, *shifted_sums = sums
    mean = torch.tensor(shifted_sums, dtype=torch.float64).view(mc.es_pairs, 2) / (b * dist.world_size())
    grad = es_gradient(directions, mean[:, 0], mean[:, 1], mc.es_sigma)
    skipped = 0
    ml.optimizer.zero_grad(set_to_none=True)
    if n_bad == 0 and bool(torch.isfinite(grad).all()):
        assign_flat_grad(params, grad)
        torch.nn.utils.clip_grad_norm_(params, mc.clip)
        ml.optimizer.step()
    else:
        skipped = int(n_bad) or 1
    end_state = end_state.reset(~ok, static_weights(model, ml.names)) if skipped else end_state
    report = WindowReport(
        meta_loss=meta_sum / meta_count if meta_count else float("nan"), static_loss=static_sum / dist.world_size(),
        skipped=skipped, reset_streams=int(n_bad), tokens=mc.window * mc.seg_len * b * dist.world_size(),
        diag={**{k: float(v) for k, v in diag.items()}, "es/grad_norm": float(grad.norm()),
              "es/spread": float((mean[:, 0] - mean[:, 1]).abs().mean())},
    )
    return end_state, static_lm, report


__all__ = ["es_window"]
