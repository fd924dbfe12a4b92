"""The tied table's two reads as autograd Functions: the per-stream lookup with a sparse gradient, and the decoder
for a few rows computed table-first (`model/awd_lstm.py`'s `embed` and `decode` choose them)."""
from __future__ import annotations

import torch
from torch import Tensor


class StreamLookup(torch.autograd.Function):
    """`weight[streams, tokens]` for a per-stream table `[B, V, E]`, whose gradient is sparse (the looked-up rows).

    Plain indexing returns a dense `[B, V, E]` gradient: a fill of the whole table and then a second pass to add
    it to the tied decoder's dense gradient, a third of all-parameter dynamic evaluation's time (model=small).
    A sparse gradient is added to the decoder's row by row (a profile shows autograd still adding it out of
    place, into a copy of the dense one, apparently because that one comes from a Python Function). Reading
    without a graph avoids both: the table's gradient stays factored (`factored_gradient.py`). Under double
    backward (meta.second_order) the dense, differentiable form is used.
    """

    @staticmethod
    def forward(ctx, weight: Tensor, streams: Tensor, tokens: Tensor) -> Tensor:
        ctx.save_for_backward(streams, tokens)
        ctx.shape = weight.shape
        return weight[streams, tokens]

    @staticmethod
    def backward(ctx, grad: Tensor):
        streams, tokens = ctx.saved_tensors
        streams = streams.expand_as(tokens)
        if torch.is_grad_enabled():  # create_graph: a gradient that is itself differentiable
            dense = grad.new_zeros(ctx.shape).index_put((streams, tokens), grad, accumulate=True)
            return dense, None, None
        rows = torch.stack([streams.reshape(-1), tokens.reshape(-1)])
        sparse = torch.sparse_coo_tensor(rows, grad.reshape(-1, grad.shape[-1]), ctx.shape, check_invariants=False)
        return sparse, None, None



# Up to this many rows per table, the decoder multiplies table-first (`W @ hᵀ`): a few rows against the whole table
# read it once, like a matrix-vector product, twice as fast on CPU as `h @ Wᵀ` at 5 rows; no gain from ~20 rows on.
SKINNY_ROWS = 8


class SkinnyDecode(torch.autograd.Function):
    """Logits `[T, B, V]` of a few rows `h [T, B, E]` against a table `[V, E]` or per-stream `[B, V, E]`.

    Table-first in both directions: logits = (W hᵀ)ᵀ, ∂h = ∂logits · W, and ∂W = ∂logitsᵀ · h already in the
    table's `[V, E]` layout (`einsum` formed it as `[E, V]` and then copied it transposed, a third pass over
    the table). Its backward is made of differentiable ops, so double backward (meta.second_order) works.
    """

    @staticmethod
    def forward(ctx, h: Tensor, weight: Tensor) -> Tensor:
        ctx.save_for_backward(h, weight)
        if weight.dim() == 2:
            rows = h.reshape(-1, h.shape[-1])
            return (weight @ rows.t()).t().reshape(*h.shape[:-1], -1)
        return torch.bmm(weight, h.permute(1, 2, 0)).permute(2, 0, 1).contiguous()

    @staticmethod
    def backward(ctx, grad: Tensor):
        h, weight = ctx.saved_tensors
        dh = dw = None
        if weight.dim() == 2:
            g, rows = grad.reshape(-1, grad.shape[-1]), h.reshape(-1, h.shape[-1])
            if ctx.needs_input_grad[0]:
                dh = (g @ weight).view_as(h)
            if ctx.needs_input_grad[1]:
                dw = g.t() @ rows
            return dh, dw
        g = grad.transpose(0, 1)  # [B, T, V]
        if ctx.needs_input_grad[0]:
            dh = torch.bmm(g, weight).transpose(0, 1)
        if ctx.needs_input_grad[1]:
            dw = torch.bmm(g.transpose(1, 2), h.transpose(0, 1))
        return dh, dw



__all__ = ["SKINNY_ROWS", "SkinnyDecode", "StreamLookup"]
