"""Reading one segment with dynamic weights swapped in functionally."""
from __future__ import annotations

from typing import Mapping, Tuple

from torch import Tensor, nn
from torch.func import functional_call
from torch.utils.checkpoint import checkpoint

from ..model import LMState, token_nll


def _read(model: nn.Module, fast: Mapping[str, Tensor], lm_state: LMState, x: Tensor, y: Tensor):
    out = functional_call(model, dict(fast), (x, lm_state))
    nll = token_nll(out.logits, y)
    return nll, out.state


def segment_losses(
    model: nn.Module,
    fast: Mapping[str, Tensor],
    lm_state: LMState,
    x: Tensor,
    y: Tensor,
    use_checkpoint: bool = False,
) -> Tuple[Tensor, Tensor, LMState]:
    """Per-stream mean loss `[B]`, per-token NLL `[L, B]` and the new (h, c).

    Only the named tensors in `fast` are replaced; the static parameters are read as they are. With
    `use_checkpoint` the segment's activations and logits are recomputed in backward instead of stored.
    """
    if use_checkpoint:
        nll, state = checkpoint(_read, model, fast, lm_state, x, y, use_reentrant=False)
    else:
        nll, state = _read(model, fast, lm_state, x, y)
    return nll.mean(0), nll, state


__all__ = ["segment_losses"]
