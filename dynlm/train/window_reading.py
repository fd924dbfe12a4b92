"""One read of a stage-2 window: K segments of the B streams, adapting as it reads, with the static model read
beside it on the same tokens when asked. An estimator reads its window once or more (ES: 2P + 1 times) from the
same starting state."""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, Dict, Iterator, List, NamedTuple, Optional

import torch
from torch import Tensor

from ..data import MetaStreams
from ..dynamic.reading_state import ReadingState
from ..dynamic.segment import adapt_segment
from ..model import LMState, static_weights
from .static_baseline import static_segment_loss


@dataclass(frozen=True)
class SegmentReading:
    """How each segment is read (`adapt_segment`'s options): whether the losses and the new state stay
    differentiable w.r.t. φ and θ0 (`keep_graph`), whether g_s does too (`second_order`), whether the LM's
    activations are recomputed in backward instead of stored (`checkpoint`), whether every parameter's segment
    gradients, summed over the streams and segments, come back (`sum_gradients`, a reading without a graph)."""

    keep_graph: bool = False
    second_order: bool = False
    checkpoint: bool = False
    sum_gradients: bool = False


class WindowRead(NamedTuple):
    per_stream: Tensor  # [b] mean segment loss of each local stream over the window
    state: ReadingState  # after the window
    static_lm: Optional[LMState]  # the static model's (h, c) after the window, when it was read
    static_losses: List[Tensor]  # its mean loss on each segment (none when it was not read)
    diag: Dict[str, Tensor]  # the learner's diagnostics on the last segment
    tokens: int  # tokens read by this rank (the static model's reading not counted)
    # name -> Σ over segments and local streams of ∂ℓ_s,b/∂(the weights read), when `sum_gradients`; else None
    gradient_sums: Optional[Dict[str, Tensor]] = None


ReadWindow = Callable[[bool], WindowRead]  # `read(with_static)`: the window once more, from its starting state


@contextlib.contextmanager
def forked_rng(device: torch.device) -> Iterator[None]:
    """Random numbers drawn inside the block leave the RNG (the device's too) as it was before it."""
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        yield


def read_window(ml, streams: MetaStreams, position: int, state: ReadingState, static_lm: Optional[LMState],
                reading: SegmentReading = SegmentReading()) -> WindowRead:
    """Read segments `position .. position + K - 1` of `streams` from `state`; `static_lm` (or None) is the static
    model's own reading state. The static model draws its dropout masks from a fork of the RNG: the adaptive
    reading, which is what is trained, draws the same masks with or without that baseline."""
    model, device = ml.model, next(ml.model.parameters()).device
    theta0 = static_weights(model, ml.names)
    if not reading.keep_graph:  # no graph to θ0, whether or not it is trained
        theta0 = {n: t.detach() for n, t in theta0.items()}
    sums: Optional[Dict[str, Tensor]] = {} if reading.sum_gradients else None
    losses: List[Tensor] = []
    static_losses: List[Tensor] = []
    diag: Dict[str, Tensor] = {}
    tokens = 0
    state = state.follow(theta0)  # a trained θ0's gradient through the weights the window starts from
    for k in range(ml.meta.window):
        batch = streams.batch(position + k)
        x, y, new = batch.x.to(device), batch.y.to(device), batch.new_article.to(device)
        state = state.reset(new, theta0)
        if static_lm is not None:
            with torch.no_grad(), forked_rng(device):
                static_loss, static_lm = static_segment_loss(model, x, y, static_lm, new)
            static_losses.append(static_loss)
        seg_loss, _, state, diag = adapt_segment(
            model, ml.learner, state, theta0, x, y, keep_graph=reading.keep_graph,
            second_order=reading.second_order, use_checkpoint=reading.checkpoint, gradient_sum=sums,
        )
        losses.append(seg_loss)
        tokens += x.numel()
    return WindowRead(torch.stack(losses).mean(0), state, static_lm, static_losses, diag, tokens, sums)


__all__ = ["ReadWindow", "SegmentReading", "WindowRead", "forked_rng", "read_window"]
