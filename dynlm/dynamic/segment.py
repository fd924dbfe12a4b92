"""One segment of adaptive reading: read it with the dynamic weights swapped in, then update them (docs/design.md §4-5).

The loss of every token is computed with the weights θ_s *before* the update that sees that token; the
update then uses the segment's gradient g_s = ∂ℓ_s/∂θ_s. Used by meta-training (graph kept to φ), by the
reading loop of evaluation (no graph kept); `segment_losses` alone reads a segment with swapped-in weights.
Without a graph, a rule that takes factored gradients (`rule.takes_factored_gradients`) gets those of the adapting
tied table and of the per-stream LSTM matrices as `FactoredGradient`s, never formed in full
(`kernels/factored_gradient.py`), and the static weights are read as data (detached): nothing differentiates them.
"""
from __future__ import annotations

from typing import Dict, Mapping, Optional, Set, Tuple

import torch
from torch import Tensor, nn
from torch.func import functional_call
from torch.utils.checkpoint import checkpoint

from ..kernels.factored_gradient import FactoredGradient, TableGradient
from ..kernels.per_stream_lstm import WeightFactors
from ..model import LMState, detach_state, token_nll
from .fast_weights import requiring_grad
from .reading_state import ReadingState


def _read(model: nn.Module, fast: Mapping[str, Tensor], lm_state: LMState, x: Tensor, y: Tensor,
          inputs: Optional[Dict[str, Tensor]] = None):
    out = functional_call(model, dict(fast), (x, lm_state), {} if inputs is None else {"inputs": inputs})
    return token_nll(out.logits, y), out.state


def _static_as_data(model: nn.Module, fast: Mapping[str, Tensor]) -> Dict[str, Tensor]:
    """`fast` with every other parameter of the model swapped in detached: reading without a graph never
    differentiates the static weights, whatever their `requires_grad`."""
    return {**{n: p.detach() for n, p in model.named_parameters() if n not in fast}, **fast}


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
    inputs: Optional[Dict[str, Tensor]] = None,
) -> Tuple[Tensor, Tensor, LMState]:
    """Per-stream mean loss `[B]`, per-token NLL `[L, B]` and the new (h, c).

    Only the named tensors in `fast` are replaced; the static parameters are read as they are. With
    `use_checkpoint` the segment's activations and logits are recomputed in backward instead of stored.
    `mask [L, B]` (True: a real token) averages each stream over its own tokens: streams of a batch whose
    segments are shorter are padded at the end (what follows the padding is a reset or the end of the stream).
    `inputs`: a dict that gets what each matrix multiplied (the model's `inputs`).
    """
    if use_checkpoint:
        nll, state = checkpoint(_read, model, fast, lm_state, x, y, inputs, use_reentrant=False)
    else:
        nll, state = _read(model, fast, lm_state, x, y, inputs)
    return _mean_over(nll, mask), nll, state


def _table_name(model: nn.Module, fast: Mapping[str, Tensor]) -> Optional[str]:
    """The tied table's name when it adapts per stream; else None."""
    name = getattr(model, "TIED_TABLE", None)
    return name if name in fast and fast[name].dim() == 3 else None


def _gradients_factored(model, fast, lm_state, x, y, mask, overwrite: Set[str], shared: Mapping[str, Tensor]):
    """Losses, state and gradients, the per-stream matrices' as `FactoredGradient`s: the decoder reads the tied
    table detached (autograd stops at the logits and at the looked-up rows), and the LSTM recurrences hand over the
    factors of their weights' gradients. `overwrite`: the names whose step may write into the old tensor. `shared`:
    leaves read in place of the weights that do not adapt, whose gradients come back too (else `{}`)."""
    table = _table_name(model, fast)
    captured = WeightFactors({n: t for n, t in fast.items() if n != table and t.dim() == 3})
    with torch.enable_grad():
        out = functional_call(model, {**_static_as_data(model, fast), **shared}, (x, lm_state),
                              {"detach_decoder_table": table is not None, "factors": captured})
        nll = token_nll(out.logits, y)
        seg_loss = _mean_over(nll, mask)
        dense = [n for n in fast if n != table and n not in captured.seen]
        ends = [out.embedded, out.logits] if table is not None else []
        found = torch.autograd.grad(seg_loss.sum(), [fast[n] for n in dense + captured.seen] + ends
                                    + list(shared.values()), allow_unused=True)
        found, shared_found = found[:len(found) - len(shared)], found[len(found) - len(shared):]
    if any(g is not None for g in found[len(dense): len(dense) + len(captured.seen)]):
        raise RuntimeError(f"the weights {captured.seen} are read beyond the LSTM recurrences, whose gradients alone "
                           "are factored: reading them this way would drop part of their gradient")
    unused = [n for n, g in zip(dense, found) if g is None]
    if unused:  # as autograd.grad itself would say without allow_unused (needed above for the factored weights)
        raise RuntimeError(f"the dynamic weights {unused} are not used in computing the loss")
    grads: Dict[str, object] = dict(zip(dense, found))
    for n in captured.seen:
        grads[n] = FactoredGradient(*captured.factors[n], overwrite=n in overwrite)
    if table is not None:
        grads[table] = TableGradient(found[-1], out.last_dropped.detach(), x, found[-2], overwrite=table in overwrite)
    return seg_loss, nll, out.state, {n: grads[n] for n in fast}, dict(zip(shared, shared_found))


def _shared_leaves(model: nn.Module, fast: Mapping[str, Tensor]) -> Dict[str, Tensor]:
    """The weights that do not adapt, as fresh leaves requiring gradients: read in their place, they give the
    gradient of the segment's loss w.r.t. them (shared by every stream) in the same backward."""
    return {n: p.detach().requires_grad_() for n, p in model.named_parameters() if n not in fast}


def _add_stream_sums(total: Dict[str, Tensor], per_stream: Mapping[str, object], shared: Mapping[str, Tensor]) -> None:
    """`total[n] += Σ_b g_b`: the adapting weights' per-stream gradients summed over the streams (a factored one as
    one product, `FactoredGradient.stream_sum`), the shared weights' as they are."""
    sums = {n: g.stream_sum() if isinstance(g, FactoredGradient) else g.sum(0) for n, g in per_stream.items()}
    for n, g in {**sums, **shared}.items():
        if n in total:
            total[n].add_(g)
        else:
            total[n] = g  # a new tensor: a sum, a product or autograd's


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
    gradient_sum: Optional[Dict[str, Tensor]] = None,
) -> Tuple[Tensor, Tensor, ReadingState, Dict[str, Tensor]]:
    """Returns the per-stream segment loss `[B]`, the per-token NLL `[L, B]`, the next state, diagnostics.

    `keep_graph`: the losses and the new state stay differentiable w.r.t. φ (and θ0) for meta-training.
    `second_order`: g_s itself stays differentiable (Hessian-vector products in the meta-gradient);
    otherwise g_s is treated as data (first-order meta-learning). `mask`: see `segment_losses`.
    `reuse_weights`: the caller gives up `state.fast` (a reading loop that only carries the new state on): the
    factored step may write the new weights into the memory of those the state owns (`state.owned`: made by its
    updates and resets, never θ0's). `gradient_sum` (reading without a graph): the segment's gradients of every
    parameter of the model, summed over the streams, are added into it by name (first-order joint training:
    `train/first_order_estimator.py`); the weights that do not adapt are then read as leaves to get theirs.
    """
    if gradient_sum is not None and keep_graph:
        raise ValueError("gradient_sum is for a reading without a graph (keep_graph=False)")
    fast = requiring_grad(state.fast)
    shared = _shared_leaves(model, fast) if gradient_sum is not None else {}
    inputs = None  # what each matrix multiplied, for a rule that reads it (`takes_inputs`)
    if not keep_graph and getattr(rule, "takes_factored_gradients", False):
        overwrite = set(state.owned) if reuse_weights else set()
        seg_loss, nll, lm_state, grads, shared_grads = _gradients_factored(
            model, fast, state.lm, x, y, mask, overwrite, shared)
    else:
        read_as = fast if keep_graph else {**_static_as_data(model, fast), **shared}
        inputs = {} if getattr(rule, "takes_inputs", False) else None  # factored gradients carry them (`u`)
        with torch.enable_grad():
            seg_loss, nll, lm_state = segment_losses(model, read_as, state.lm, x, y, use_checkpoint, mask, inputs)
            found = torch.autograd.grad(seg_loss.sum(), list(fast.values()) + list(shared.values()),
                                        retain_graph=keep_graph, create_graph=second_order)
        grads = {n: (g if second_order else g.detach()) for n, g in zip(fast, found)}
        shared_grads = dict(zip(shared, found[len(fast):]))
    if gradient_sum is not None:
        _add_stream_sums(gradient_sum, grads, shared_grads)
    extra = {} if inputs is None else {"inputs": {n: u.transpose(0, 1) for n, u in inputs.items()}}  # [B, L, C]
    if keep_graph:
        new_fast, learner, diag = rule(fast, grads, theta0, seg_loss.detach(), state.learner, **extra)
        return seg_loss, nll, ReadingState(lm_state, new_fast, learner), diag
    with torch.no_grad():
        detached = {n: t.detach() for n, t in fast.items()}
        new_fast, learner, diag = rule(detached, grads, theta0, seg_loss.detach(), state.learner, **extra)
    # the rule's outputs are new tensors (or, where allowed, the old ones' memory): this reading owns them
    new_state = ReadingState(detach_state(lm_state), new_fast, learner, frozenset(new_fast))
    return seg_loss.detach(), nll.detach(), new_state, diag


__all__ = ["adapt_segment", "segment_losses"]
