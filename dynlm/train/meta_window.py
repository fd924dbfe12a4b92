"""The unit of work of stage 2: one window, whatever its estimator (`estimator_base.py`).

The estimator reads the window and sets the meta-gradient; then, the same for every estimator: unless a gradient
or a stream is non-finite, the gradient is clipped and the optimiser steps; if one is, nothing steps and those
streams restart from θ0. The reading state is detached (the truncation point) and carries on to the next window.
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

import torch

from .. import dist
from ..data import MetaStreams
from ..dynamic.fast_weights import finite_streams
from ..dynamic.reading_state import ReadingState
from ..model import LMState, static_weights
from .meta_learning import MetaLearning
from .window_reading import WindowRead, read_window
from .window_report import WindowReport


def meta_window(ml: MetaLearning, streams: MetaStreams, position: int, state: ReadingState, static_lm: LMState,
                seed: int) -> Tuple[ReadingState, LMState, WindowReport]:
    """Read segments `position .. position + K - 1` of `streams`, adapting as it reads, and train with
    `ml.estimator`. `static_lm` is the static model's own reading state on the same streams (for the improvement);
    `seed` is the window's, the same on every rank (ES draws its directions from it)."""
    mc, model = ml.meta, ml.model
    model.train()  # stage 2 reads with stage 1's dropout
    params = ml.trained_parameters
    ml.optimizer.zero_grad(set_to_none=True)

    def read(with_static: bool) -> WindowRead:
        lm: Optional[LMState] = static_lm if with_static else None
        return read_window(ml, streams, position, state, lm, ml.estimator.reading)

    window, estimator_diag = ml.estimator.estimate(ml, read, seed)
    grads_ok = all(p.grad is None or bool(torch.isfinite(p.grad).all()) for p in params)  # same on all ranks
    per_stream = window.per_stream.detach()
    streams_ok = finite_streams(window.state.fast) & torch.isfinite(per_stream)
    # One all-reduce for the decision (every rank skips or steps together) and the logged sums.
    finite_meta = per_stream[streams_ok]
    n_bad, meta_sum, meta_count, static_sum, tokens = dist.sum_floats(
        int((~streams_ok).sum()), float(finite_meta.sum()), finite_meta.numel(),
        float(torch.stack(window.static_losses).mean()), window.tokens,
    )
    skipped = 0
    if grads_ok and n_bad == 0:
        torch.nn.utils.clip_grad_norm_(params, mc.clip)
        ml.optimizer.step()
    else:
        skipped = int(n_bad) or 1
    state = window.state.detach()
    if skipped:
        state = state.reset(~streams_ok, static_weights(model, ml.names))
    report = WindowReport(
        meta_loss=meta_sum / meta_count if meta_count else math.nan, static_loss=static_sum / dist.world_size(),
        skipped=skipped, reset_streams=int(n_bad), tokens=int(tokens),
        diag={**{k: float(v) for k, v in window.diag.items()}, **estimator_diag},
    )
    return state, window.static_lm, report


__all__ = ["meta_window"]
