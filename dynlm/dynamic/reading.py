"""The reading loop: a split read as one continuous stream (batch 1), the standard WikiText protocol.

One loop serves every method. `static` reads with the long-term weights only (no update, `seg_len` tokens per
forward pass, which changes nothing but speed); `dyneval` and the learned `meta` adapt the dynamic weights
segment by segment with their update rule (`segment.adapt_segment`). Every token is scored before any update
that has seen it, and the static parameters are read only: they are bit-identical afterwards.

The stream is primed with one `<eos>` (the line before the split's first line has ended), so that every token
of the split is scored: token counts and NLL sums then add up exactly to the split's, per article.
"""
from __future__ import annotations

from typing import Callable, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn
from torch.func import functional_call

from ..model import detach_state, static_weights, token_nll
from .reading_state import ReadingState, fresh_state
from .segment import adapt_segment


def primed_stream(ids: Tensor, eos_id: int) -> Tensor:
    return torch.cat([ids.new_tensor([eos_id]), ids])


def segment_bounds(n: int, seg_len: int, restarts: Optional[Sequence[int]] = None) -> List[Tuple[int, int, bool]]:
    """`(start, end, reset)` for segments of at most `seg_len` targets; none crosses a restart point."""
    cuts = sorted(set(int(r) for r in restarts or []) | {0})
    bounds = []
    for i, s in enumerate(cuts):
        e = cuts[i + 1] if i + 1 < len(cuts) else n
        for a in range(s, e, seg_len):
            bounds.append((a, min(a + seg_len, e), a == s and restarts is not None))
    return bounds


def _static_segment(model: nn.Module, weights: Optional[Mapping[str, Tensor]], state: ReadingState, x, y):
    with torch.no_grad():
        out = model(x, state.lm) if weights is None else functional_call(model, dict(weights), (x, state.lm))
    return token_nll(out.logits, y), ReadingState(detach_state(out.state), state.fast, state.learner)


def read_stream(
    model: nn.Module,
    ids: Tensor,
    eos_id: int,
    seg_len: int,
    rule: Optional[nn.Module] = None,
    names: Sequence[str] = (),
    restarts: Optional[Sequence[int]] = None,
    weights: Optional[Mapping[str, Tensor]] = None,
    on_segment: Optional[Callable[[int], None]] = None,
) -> Tensor:
    """Per-token NLL `[N]` (nats) of `ids` read as one stream.

    `rule` (with the dynamic parameter `names`) adapts after every `seg_len` tokens; without it the static
    weights read the stream, `seg_len` tokens per forward pass, optionally replaced by `weights` (e.g. NT-ASGD's
    averages). `restarts` (token indices) reset the whole reading state there: zero (h, c), θ0 weights.
    `on_segment(tokens)` is called after every segment (progress bars).
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    theta0 = {n: t.detach() for n, t in static_weights(model, names).items()}
    learner = rule.init_learner_state({k: v.unsqueeze(0) for k, v in theta0.items()}) if rule is not None else {}
    state = fresh_state(model, theta0, 1, learner)
    stream = primed_stream(ids, eos_id).to(device)
    n = ids.numel()
    out = torch.empty(n, dtype=torch.float32)
    reset = torch.ones(1, dtype=torch.bool, device=device)
    try:
        for start, end, restart in segment_bounds(n, seg_len, restarts):
            if restart:
                state = state.reset(reset, theta0)
            x = stream[start:end].unsqueeze(1)
            y = stream[start + 1 : end + 1].unsqueeze(1)
            if rule is None:
                nll, state = _static_segment(model, weights, state, x, y)
            else:
                _, nll, state, _ = adapt_segment(model, rule, state, theta0, x, y)
            out[start:end] = nll[:, 0].float().cpu()
            if on_segment is not None:
                on_segment(end - start)
    finally:
        model.train(was_training)
    return out


__all__ = ["primed_stream", "read_stream", "segment_bounds"]
