"""The static model read beside the adaptive one, on the same segments: the baseline of `meta/improvement`."""
from __future__ import annotations

from ..dynamic.fast_weights import zero_rows
from ..model import detach_state, token_nll


def static_segment_loss(model, x, y, lm_state, new_article):
    """The static model's mean loss on a segment, reading with its own (h, c)."""
    lm_state = [(zero_rows(h, new_article), zero_rows(c, new_article)) for h, c in lm_state]
    out = model(x, lm_state)
    return token_nll(out.logits, y).mean(), detach_state(out.state)


__all__ = ["static_segment_loss"]
