"""Adaptive evaluation: read a split as one stream (batch 1) and adapt the dynamic weights segment by
segment with an update rule (`dyneval` or the learned `meta`). Every token is scored before any update that
has seen it. The static parameters are read only: they are bit-identical afterwards.
"""
from __future__ import annotations

from typing import Callable, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from ..dynamic.adapt import adapt_segment
from ..dynamic.fast_weights import static_weights
from ..dynamic.reading_state import fresh_state
from .stream import primed_stream


def segment_bounds(n: int, seg_len: int, restarts: Optional[Sequence[int]] = None) -> List[Tuple[int, int, bool]]:
    """`(start, end, reset)` for segments of at most `seg_len` targets; none crosses a restart point."""
    cuts = sorted(set(int(r) for r in restarts or []) | {0})
    bounds = []
    for i, s in enumerate(cuts):
        e = cuts[i + 1] if i + 1 < len(cuts) else n
        for a in range(s, e, seg_len):
            bounds.append((a, min(a + seg_len, e), a == s and restarts is not None))
    return bounds


def adaptive_token_nll(
    model: nn.Module,
    rule: nn.Module,
    names: Sequence[str],
    ids: Tensor,
    eos_id: int,
    seg_len: int,
    restarts: Optional[Sequence[int]] = None,
    theta0: Optional[Mapping[str, Tensor]] = None,
    on_segment: Optional[Callable[[int], None]] = None,
) -> Tensor:
    """Per-token NLL `[N]` of `ids` under adaptive reading; `restarts` (token indices) reset the state.

    `on_segment(tokens)` is called after every segment (progress bars)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    theta0 = {n: t.detach() for n, t in (theta0 or static_weights(model, names)).items()}
    stream = primed_stream(ids, eos_id).to(device)
    n = ids.numel()
    out = torch.empty(n, dtype=torch.float32)
    state = fresh_state(model, theta0, 1, rule.init_learner_state({k: v.unsqueeze(0) for k, v in theta0.items()}))
    reset = torch.ones(1, dtype=torch.bool, device=device)
    try:
        for start, end, restart in segment_bounds(n, seg_len, restarts):
            if restart:
                state = state.reset(reset, theta0)
            x = stream[start:end].unsqueeze(1)
            y = stream[start + 1 : end + 1].unsqueeze(1)
            _, nll, state, _ = adapt_segment(model, rule, state, theta0, x, y)
            out[start:end] = nll[:, 0].float().cpu()
            if on_segment is not None:
                on_segment(end - start)
    finally:
        model.train(was_training)
    return out
