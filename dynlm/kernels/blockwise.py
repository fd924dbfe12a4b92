"""Run a per-coordinate function over blocks of coordinates, recomputing each block in backward.

The meta-learner applies a small MLP to every dynamic coordinate of every stream (millions of them). Done
as whole-tensor autograd ops, every intermediate (`[B, *shape, 16]` hidden units and more) is written to
memory, read back, and kept for backward: the rule becomes memory-bound and holds ~30 floats per
coordinate per segment. Here the coordinates (the last dimension) are cut into blocks small enough for the
CPU's cache; the forward runs block by block without autograd, and the backward recomputes one block at a
time under autograd, so that only the inputs are kept between forward and backward (like
`torch.utils.checkpoint`, but per block). The Python loop is over blocks of tens of thousands of
coordinates, never over single coordinates or streams.

`fn(*block_tensors, *whole_tensors) -> (outputs, aux)`: `block_tensors` are the `sliced` inputs cut along
their last dimension (any leading dimensions broadcast as `fn` likes), `whole_tensors` are passed entire
(parameters of the MLP); `outputs` is a tuple of tensors whose last dimension is the block's width (they
are assembled along it), `aux` a tuple of tensors summed over blocks (diagnostics, not differentiable).

If the backward itself has to be differentiable (`create_graph=True`), it recomputes everything at once
under autograd: exact, and only used by higher-order gradients.
"""
from __future__ import annotations

from typing import Callable, List, Optional, Sequence, Tuple

import torch
from torch import Tensor

# Coordinates (over all leading dimensions) per block. CPU: ~32k keeps a [block, 16] hidden layer within
# the L2 cache (measured best among 8k-128k). GPU: large blocks (few kernel launches), bounded memory.
BLOCK_COORDS = 32768
GPU_BLOCK_COORDS = 1 << 22


def blocks(width: int, rows: int, budget: Optional[int] = None) -> List[slice]:
    """Slices of the last dimension (`width` columns, `rows` rows over the leading dimensions)."""
    size = max(1, (budget or BLOCK_COORDS) // max(1, rows))
    return [slice(a, min(a + size, width)) for a in range(0, width, size)]


def _cut(t: Optional[Tensor], sl: slice) -> Optional[Tensor]:
    return None if t is None else t[..., sl]


class _Blockwise(torch.autograd.Function):
    @staticmethod
    def forward(ctx, fn, n_out, slices, n_sliced, *tensors):
        sliced, whole = tensors[:n_sliced], tensors[n_sliced:]
        outs: List[Tensor] = []
        aux: List[Tensor] = []
        for j, sl in enumerate(slices):
            o, a = fn(*[_cut(t, sl) for t in sliced], *whole)
            if j == 0:
                width = slices[-1].stop
                outs = [x.new_empty(*x.shape[:-1], width) for x in o]
                aux = [x.clone() for x in a]
            else:
                for acc, x in zip(aux, a):
                    acc += x
            for dst, x in zip(outs, o):
                dst[..., sl] = x
        ctx.fn, ctx.slices, ctx.n_sliced, ctx.n_out = fn, slices, n_sliced, n_out
        ctx.save_for_backward(*tensors)
        ctx.mark_non_differentiable(*aux)
        return (*outs, *aux)

    @staticmethod
    def backward(ctx, *grads):
        tensors = ctx.saved_tensors
        n_sliced, n_out = ctx.n_sliced, ctx.n_out
        need = ctx.needs_input_grad[4:]
        grads = grads[:n_out]
        wanted = [j for j, t in enumerate(tensors) if need[j] and t is not None]
        result: List[Optional[Tensor]] = [None] * len(tensors)
        if not wanted:
            return (None, None, None, None, *result)
        if torch.is_grad_enabled():  # double backward: one differentiable recomputation of everything
            with torch.enable_grad():
                outs, _ = ctx.fn(*tensors)
                pairs = [(o, g) for o, g in zip(outs, grads) if g is not None and o.requires_grad]
                got = torch.autograd.grad([o for o, _ in pairs], [tensors[j] for j in wanted],
                                          [g for _, g in pairs], create_graph=True, allow_unused=True)
            for j, g in zip(wanted, got):
                result[j] = g if g is not None else torch.zeros_like(tensors[j])
            return (None, None, None, None, *result)
        for j in wanted:
            t = tensors[j]
            result[j] = torch.zeros(t.shape, dtype=t.dtype, device=t.device)
        for sl in ctx.slices:
            with torch.enable_grad():
                inputs = [
                    None if t is None else
                    (t[..., sl] if j < n_sliced else t).detach().requires_grad_(need[j])
                    for j, t in enumerate(tensors)
                ]
                outs, _ = ctx.fn(*inputs)
                pairs = [(o, g[..., sl]) for o, g in zip(outs, grads) if g is not None and o.requires_grad]
                if not pairs:
                    continue
                got = torch.autograd.grad([o for o, _ in pairs], [inputs[j] for j in wanted],
                                          [g for _, g in pairs], allow_unused=True)
            for j, g in zip(wanted, got):
                if g is None:
                    continue
                if j < n_sliced:
                    result[j][..., sl] += g
                else:
                    result[j] += g
        return (None, None, None, None, *result)


def blockwise(
    fn: Callable[..., Tuple[Sequence[Tensor], Sequence[Tensor]]],
    sliced: Sequence[Optional[Tensor]],
    whole: Sequence[Tensor],
    n_out: int,
    width: int,
    rows: int,
    budget: Optional[int] = None,
) -> Tuple[Tuple[Tensor, ...], Tuple[Tensor, ...]]:
    """`(outputs, aux)` of `fn` over blocks of the last dimension (`width` wide, `rows` leading rows)."""
    if budget is None:
        on_cpu = all(t is None or t.device.type == "cpu" for t in sliced)
        budget = BLOCK_COORDS if on_cpu else GPU_BLOCK_COORDS
    res = _Blockwise.apply(fn, n_out, blocks(width, rows, budget), len(sliced), *sliced, *whole)
    return tuple(res[:n_out]), tuple(res[n_out:])


__all__ = ["BLOCK_COORDS", "GPU_BLOCK_COORDS", "blocks", "blockwise"]
