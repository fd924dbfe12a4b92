"""One segment of adaptive reading: read it with the dynamic weights swapped in, then update them (DESIGN §2).

The loss of every token is computed with the weights θ_s *before* the update that sees that token; the
update then uses the segment's gradient g_s = ∂ℓ_s/∂θ_s. Used by meta-training (graph kept to φ), by the
reading loop of evaluation (no graph kept); `segment_losses` alone reads a segment with swapped-in weights.
Without a graph, a rule that takes a `TableGradient` (`rule.takes_table_gradient`) gets the adapting tied table's
gradient in factored form, never formed in full (`table_gradient.py`).
"""
from __future__ import annotations

from typing import Dict, Mapping, Optional, Tuple

import torch
from torch import Tensor, nn
from torch.func import functional_call
from torch.utils.checkpoint import checkpoint

from ..model import LMState, detach_state, token_nll
from .fast_weights import requiring_grad
from .reading_state import ReadingState
from .table_gradient import TableGradient


def _read(model: nn.Module, fast: Mapping[str, Tensor], lm_state: LMState, x: Tensor, y: Tensor):
    out = functional_call(model, dict(fast), (x, lm_state))
    return token_nll(out.logits, y), out.state


def _mean_over(nll: Tensor, mask: Optional[Tensor]) -> Tensor:
    if mask is None:
        return nll.mean(0)
    m = mask.to(nll.dtype)
    return (nll * m).sum(0) / m.sum(0).clamp(min=1.0)


def segment_losses(
    model: nn.Module,
    fast: Mapping[str, Tensor],
    lm_state: LMState,
    x: Tensor,
    y: Tensor,
    use_checkpoint: bool = False,
    mask: Optional[Tensor] = None,
) -> Tuple[Tensor, Tensor, LMState]:
    """Per-stream mean loss `[B]`, per-token NLL `[L, B]` and the new (h, c).

    Only the named tensors in `fast` are replaced; the static parameters are read as they are. With
    `use_checkpoint` the segment's activations and logits are recomputed in backward instead of stored.
    `mask [L, B]` (True: a real token) averages each stream over its own tokens: streams of a batch whose
    segments are shorter are padded at the end (what follows the padding is a reset or the end of the stream).
    """
    if use_checkpoint:
        nll, state = checkpoint(_read, model, fast, lm_state, x, y, use_reentrant=False)
    else:
        nll, state = _read(model, fast, lm_state, x, y)
    return _mean_over(nll, mask), nll, state


def _table_name(model: nn.Module, rule: nn.Module, fast: Mapping[str, Tensor]) -> Optional[str]:
    """The tied table's name when it adapts per stream and `rule` takes its gradient factored; else None."""
    name = getattr(model, "TIED_TABLE", None)
    if getattr(rule, "takes_table_gradient", False) and name in fast and fast[name].dim() == 3:
        return name
    return None


def _gradients_factored(model, fast, lm_state, x, y, mask, table: str, overwrite: bool):
    """Losses, state and gradients with the table's as a `TableGradient`: the decoder reads the table detached
    and autograd stops at the logits and at the looked-up rows."""
    with torch.enable_grad():
        out = functional_call(model, dict(fast), (x, lm_state), {"detach_decoder_table": True})
        nll = token_nll(out.logits, y)
        seg_loss = _mean_over(nll, mask)
        rest = [n for n in fast if n != table]
        found = torch.autograd.grad(seg_loss.sum(), [fast[n] for n in rest] + [out.embedded, out.logits])
    grads = dict(zip(rest, found))
    grads[table] = TableGradient(found[-1], out.last_dropped.detach(), x, found[-2], overwrite=overwrite)
    return seg_loss, nll, out.state, {n: grads[n] for n in fast}


def adapt_segment(
    model: nn.Module,
    rule: nn.Module,
    state: ReadingState,
    theta0: Mapping[str, Tensor],
    x: Tensor,
    y: Tensor,
    keep_graph: bool = False,
    second_order: bool = False,
    use_checkpoint: bool = False,
    mask: Optional[Tensor] = None,
    reuse_weights: bool = False,
) -> Tuple[Tensor, Tensor, ReadingState, Dict[str, Tensor]]:
    """Returns the per-stream segment loss `[B]`, the per-token NLL `[L, B]`, the next state, diagnostics.

    `keep_graph`: the losses and the new state stay differentiable w.r.t. φ (and θ0) for meta-training.
    `second_order`: g_s itself stays differentiable (Hessian-vector products in the meta-gradient);
    otherwise g_s is treated as data (first-order meta-learning). `mask`: see `segment_losses`.
    `reuse_weights`: the caller gives up `state.fast` (a reading loop that only carries the new state on): the
    factored table step may write the new table into the old one's memory (never into θ0's).
    """
    fast = requiring_grad(state.fast)
    table = None if keep_graph else _table_name(model, rule, fast)
    if table is not None:
        # a table still in θ0's memory (a stream's first segment) is never written: its successor is a new tensor
        in_theta0 = fast[table].untyped_storage().data_ptr() == theta0[table].untyped_storage().data_ptr()
        seg_loss, nll, lm_state, grads = _gradients_factored(model, fast, state.lm, x, y, mask, table,
                                                             overwrite=reuse_weights and not in_theta0)
    else:
        with torch.enable_grad():
            seg_loss, nll, lm_state = segment_losses(model, fast, state.lm, x, y, use_checkpoint, mask)
            found = torch.autograd.grad(
                seg_loss.sum(), list(fast.values()), retain_graph=keep_graph, create_graph=second_order
            )
        grads = {n: (g if second_order else g.detach()) for n, g in zip(fast, found)}
    if keep_graph:
        new_fast, learner, diag = rule(fast, grads, theta0, seg_loss.detach(), state.learner)
        return seg_loss, nll, ReadingState(lm_state, new_fast, learner), diag
    with torch.no_grad():
        detached = {n: t.detach() for n, t in fast.items()}
        new_fast, learner, diag = rule(detached, grads, theta0, seg_loss.detach(), state.learner)
    return seg_loss.detach(), nll.detach(), ReadingState(detach_state(lm_state), new_fast, learner), diag


__all__ = ["adapt_segment", "segment_losses"]
