"""AWD-LSTM (Merity et al. 2017) with tied input/output embeddings.

The module owns parameters; the maths lives in pure functions (`lstm.py`, `dropout.py`). Every LSTM
weight is a plain `Parameter` read through `lstm_layer`, so `torch.func.functional_call(model, fast, ...)`
can swap in dynamic weights (shared `[out, in]` or per-stream `[B, out, in]`) without touching the static
ones. The decoder reads the embedding's own tensor: one parameter, one name (`embedding.weight`).
"""
from __future__ import annotations

import math
from typing import List, NamedTuple, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .dropout import drop_connect, embedding_row_mask, locked_dropout
from .lstm import State, lstm_layer

LMState = List[State]


class LMOutput(NamedTuple):
    logits: Tensor  # [T, B, V]
    state: LMState  # per layer (h, c)
    last_raw: Tensor  # last layer's output before output dropout [T, B, E] (for TAR)
    last_dropped: Tensor  # after output dropout (for AR); the decoder's input
    embedded: Tensor  # the looked-up rows [T, B, E], before embedding dropout


class LSTMWeights(nn.Module):
    """The four tensors of one LSTM layer, named like `nn.LSTM`'s (without the `_l0` suffix)."""

    def __init__(self, input_size: int, hidden_size: int):
        super().__init__()
        self.weight_ih = nn.Parameter(torch.empty(4 * hidden_size, input_size))
        self.weight_hh = nn.Parameter(torch.empty(4 * hidden_size, hidden_size))
        self.bias_ih = nn.Parameter(torch.empty(4 * hidden_size))
        self.bias_hh = nn.Parameter(torch.empty(4 * hidden_size))
        bound = 1.0 / math.sqrt(hidden_size)  # nn.LSTM's initialisation
        for p in self.parameters():
            nn.init.uniform_(p, -bound, bound)


class _StreamLookup(torch.autograd.Function):
    """`weight[streams, tokens]` for a per-stream table `[B, V, E]`, whose gradient is sparse (the looked-up rows).

    Plain indexing returns a dense `[B, V, E]` gradient: a fill of the whole table and then a second pass to add
    it to the tied decoder's dense gradient, a third of all-parameter dynamic evaluation's time (model=small).
    A sparse gradient is added to the decoder's row by row (a profile shows autograd still adding it out of
    place, into a copy of the dense one, apparently because that one comes from a Python Function). Reading
    without a graph avoids both: the table's gradient stays factored (`dynamic/factored_gradient.py`). Under double
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


def embed(tokens: Tensor, weight: Tensor) -> Tensor:
    """Look up `tokens [T, B]` in a shared `[V, E]` or per-stream `[B, V, E]` table."""
    if weight.dim() == 2:
        return F.embedding(tokens, weight)
    streams = torch.arange(tokens.shape[1], device=tokens.device)
    return _StreamLookup.apply(weight, streams.unsqueeze(0), tokens)


# Up to this many rows per table, the decoder multiplies table-first (`W @ hᵀ`): a few rows against the whole table
# read it once, like a matrix-vector product, twice as fast on CPU as `h @ Wᵀ` at 5 rows; no gain from ~20 rows on.
SKINNY_ROWS = 8


class _SkinnyDecode(torch.autograd.Function):
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


def decode(h: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """Tied decoder: `h [T, B, E]` against the embedding table -> logits `[T, B, V]`."""
    shared = weight.dim() == 2
    rows_per_table = h.shape[0] * (h.shape[1] if shared else 1)
    # A shared table that requires grad is stage 1's: autograd may not want ∂W, and this path would form it anyway
    if rows_per_table <= SKINNY_ROWS and not (shared and weight.requires_grad):
        logits = _SkinnyDecode.apply(h, weight)
    elif weight.dim() == 2:
        # as one [T·B, E] matrix: F.linear of a non-contiguous 3-d `h` (per-stream LSTM output) is a bmm against the
        # table broadcast per stream, which reads it B times
        return F.linear(h.reshape(-1, h.shape[-1]), weight, bias).view(*h.shape[:-1], -1)
    else:
        logits = torch.einsum("tbe,bve->tbv", h, weight)
    return logits + (bias.unsqueeze(0) if bias.dim() == 2 else bias)


class AWDLSTM(nn.Module):
    TIED_TABLE = "embedding.weight"  # the one parameter both the lookup and the decoder read

    # No defaults: the sizes and dropouts come from the config (`ModelConfig`, through `build_model`), their one
    # source.
    def __init__(
        self,
        vocab_size: int,
        *,
        emb_size: int,
        hidden_size: int,
        num_layers: int,
        dropout: float,
        dropouth: float,
        dropouti: float,
        dropoute: float,
        wdrop: float,
        init_range: float,
    ):
        super().__init__()
        self.vocab_size = vocab_size
        self.emb_size = emb_size
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.dropout, self.dropouth, self.dropouti, self.dropoute, self.wdrop = (
            dropout, dropouth, dropouti, dropoute, wdrop,
        )
        # No padding_idx: WikiText has no padding, and a -1 index would alias the last word.
        self.embedding = nn.Embedding(vocab_size, emb_size)
        nn.init.uniform_(self.embedding.weight, -init_range, init_range)
        sizes = [emb_size] + [hidden_size] * (num_layers - 1) + [emb_size]
        self.layers = nn.ModuleList(LSTMWeights(sizes[l], sizes[l + 1]) for l in range(num_layers))
        self.decoder_bias = nn.Parameter(torch.zeros(vocab_size))

    def layer_sizes(self) -> List[int]:
        return [layer.weight_hh.shape[-1] for layer in self.layers]

    def init_state(self, batch_size: int, device=None, dtype=None) -> LMState:
        ref = self.embedding.weight
        return [
            (
                torch.zeros(batch_size, h, device=device or ref.device, dtype=dtype or ref.dtype),
                torch.zeros(batch_size, h, device=device or ref.device, dtype=dtype or ref.dtype),
            )
            for h in self.layer_sizes()
        ]

    def forward(self, tokens: Tensor, state: LMState, detach_decoder_table: bool = False) -> LMOutput:
        """Read `tokens [T, B]` from `state`; dropout is on in `train()` mode only.

        `detach_decoder_table`: the decoder reads the tied table without a path back to it, so autograd never forms
        the table's dense gradient; a caller that wants it assembles it from ∂logits, `last_dropped` and the
        gradient of `embedded` (`dynamic/factored_gradient.py`).
        """
        training = self.training
        table = self.embedding.weight
        x = embedded = embed(tokens, table)
        if training and self.dropoute > 0:
            rows = embedding_row_mask(self.vocab_size, self.dropoute, table)
            x = x * rows[tokens]
        x = locked_dropout(x, self.dropouti, training)
        new_state: LMState = []
        for l, layer in enumerate(self.layers):
            w_hh = drop_connect(layer.weight_hh, self.wdrop, training)
            x, s = lstm_layer(x, state[l], layer.weight_ih, w_hh, layer.bias_ih, layer.bias_hh)
            new_state.append(s)
            if l < self.num_layers - 1:
                x = locked_dropout(x, self.dropouth, training)
        raw = x
        dropped = locked_dropout(raw, self.dropout, training)
        logits = decode(dropped, table.detach() if detach_decoder_table else table, self.decoder_bias)
        return LMOutput(logits, new_state, raw, dropped, embedded)


def detach_state(state: LMState) -> LMState:
    return [(h.detach(), c.detach()) for h, c in state]


def token_nll(logits: Tensor, targets: Tensor) -> Tensor:
    """Per-token negative log-likelihood `[T, B]` (nats)."""
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="none").view_as(targets)


def activation_regularization(dropped: Tensor, raw: Tensor, alpha: float, beta: float) -> Tensor:
    """AR (penalise large outputs) + TAR (penalise fast-changing outputs), AWD-LSTM's form."""
    loss = dropped.new_zeros(())
    if alpha:
        loss = loss + alpha * dropped.pow(2).mean()
    if beta:
        loss = loss + beta * (raw[1:] - raw[:-1]).pow(2).mean()
    return loss


def build_model(cfg, vocab_size: int) -> AWDLSTM:
    """Model from a `ModelConfig`."""
    return AWDLSTM(
        vocab_size,
        emb_size=cfg.emb_size,
        hidden_size=cfg.hidden_size,
        num_layers=cfg.num_layers,
        dropout=cfg.dropout,
        dropouth=cfg.dropouth,
        dropouti=cfg.dropouti,
        dropoute=cfg.dropoute,
        wdrop=cfg.wdrop,
        init_range=cfg.init_range,
    )


__all__: Tuple[str, ...] = (
    "AWDLSTM", "LMOutput", "LMState", "build_model", "detach_state", "token_nll",
    "activation_regularization", "embed", "decode",
)
