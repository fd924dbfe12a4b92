"""Static evaluation: the long-term weights only, no adaptation."""
from __future__ import annotations

from typing import Mapping, Optional

import torch
from torch import Tensor, nn
from torch.func import functional_call

from ..model import detach_state, token_nll
from .stream import stream_chunks


@torch.no_grad()
def static_token_nll(
    model: nn.Module,
    ids: Tensor,
    eos_id: int,
    chunk: int = 256,
    weights: Optional[Mapping[str, Tensor]] = None,
) -> Tensor:
    """Per-token NLL `[N]` (nats) of `ids` read as one stream with batch 1.

    `weights` (name -> tensor) replaces the model's parameters for this call only (e.g. NT-ASGD averages).
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    state = model.init_state(1)
    out = torch.empty(ids.numel(), dtype=torch.float32)
    try:
        for start, x, y in stream_chunks(ids, eos_id, chunk):
            x, y = x.to(device), y.to(device)
            res = model(x, state) if weights is None else functional_call(model, dict(weights), (x, state))
            state = detach_state(res.state)
            out[start : start + x.shape[0]] = token_nll(res.logits, y)[:, 0].float().cpu()
    finally:
        model.train(was_training)
    return out
