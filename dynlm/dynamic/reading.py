"""The reading loop: a split read as one continuous stream (batch 1), the standard WikiText protocol, or cut at
article boundaries into B streams read side by side (a faster protocol for sweeps and quick looks).

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
from .rule_base import FrozenWeights
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
    return token_nll(out.logits, y), ReadingState(detach_state(out.state), state.fast, state.learner, state.owned)


def stream_starts(article_starts: Sequence[int], num_tokens: int, streams: int) -> List[int]:
    """Where each of `streams` contiguous chunks of whole articles starts: the article starts nearest to
    k · num_tokens / streams (at most one stream per article)."""
    starts = sorted(int(a) for a in article_starts)
    if streams < 1 or streams > len(starts):
        raise ValueError(f"cannot read {len(starts)} articles as {streams} streams: eval.streams must be between 1 "
                         f"and the number of articles read")
    chosen = [0]
    for k in range(1, streams):
        later = [a for a in starts if a > chosen[-1]]
        # the streams after this one each need an article start of their own
        candidates = later[: len(later) - (streams - k - 1)]
        chosen.append(min(candidates, key=lambda a: abs(a - k * num_tokens / streams)))
    return chosen


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
    starts: Sequence[int] = (0,),
) -> Tensor:
    """Per-token NLL `[N]` (nats) of `ids` read as one stream, or as B streams read side by side.

    `rule` (with the dynamic parameter `names`) adapts after every `seg_len` tokens; without it the static
    weights read the stream, `seg_len` tokens per forward pass, optionally replaced by `weights` (e.g. NT-ASGD's
    averages). `restarts` (token indices) reset the whole reading state there: zero (h, c), θ0 weights.
    `starts` (token indices, the first 0) cut `ids` into B contiguous streams, each primed with `<eos>` and read
    with its own state and dynamic weights (batch B; see `stream_starts`): the standard protocol is B = 1.
    `on_segment(tokens)` is called after every step (progress bars).
    """
    device = next(model.parameters()).device
    n = ids.numel()
    edges = list(starts) + [n]
    if edges[0] != 0 or any(b <= a for a, b in zip(edges[:-1], edges[1:])):
        raise ValueError(f"stream starts {list(starts)} must begin at 0 and increase within the {n} tokens")
    cuts = sorted(set(int(r) for r in restarts or []))
    streams = [primed_stream(ids[a:e], eos_id).to(device) for a, e in zip(edges[:-1], edges[1:])]
    plans = [segment_bounds(e - a, seg_len, [r - a for r in cuts if a <= r < e] if restarts is not None else None)
             for a, e in zip(edges[:-1], edges[1:])]
    # constant for the whole reading: the rule derives its products from θ0 once (e.g. flush ⊙ θ0)
    theta0 = FrozenWeights({k: t.detach() for k, t in static_weights(model, names).items()})
    learner = rule.init_learner_state({k: v.unsqueeze(0) for k, v in theta0.items()}) if rule is not None else {}
    state = fresh_state(model, theta0, len(streams), learner)
    out = torch.empty(n, dtype=torch.float32)
    was_training = model.training
    try:
        model.eval()
        for step in range(max(len(p) for p in plans)):
            segs = [p[step] if step < len(p) else None for p in plans]
            width = max(e - a for a, e, _ in filter(None, segs))
            full = all(seg is not None and seg[1] - seg[0] == width for seg in segs)
            x = torch.full((width, len(streams)), eos_id, dtype=ids.dtype, device=device)
            y = torch.full_like(x, eos_id)
            mask = torch.zeros(width, len(streams), dtype=torch.bool, device=device)
            reset = torch.zeros(len(streams), dtype=torch.bool, device=device)
            for b, seg in enumerate(segs):
                if seg is not None:
                    a, e, restart = seg
                    x[: e - a, b], y[: e - a, b] = streams[b][a:e], streams[b][a + 1 : e + 1]
                    mask[: e - a, b] = True
                    reset[b] = restart
            if bool(reset.any()):
                state = state.reset(reset, theta0)
            if rule is None:
                nll, state = _static_segment(model, weights, state, x, y)
            else:
                _, nll, state, _ = adapt_segment(model, rule, state, theta0, x, y, mask=None if full else mask,
                                                 reuse_weights=True)
            nll = nll.float().cpu()
            for b, seg in enumerate(segs):
                if seg is not None:
                    a, e, _ = seg
                    out[edges[b] + a : edges[b] + e] = nll[: e - a, b]
            if on_segment is not None:
                on_segment(int(mask.sum()))
    finally:
        model.train(was_training)
    return out


__all__ = ["primed_stream", "read_stream", "segment_bounds", "stream_starts"]
