"""AWD-LSTM (Merity et al. 2017) with tied input/output embeddings.

The module owns parameters; the maths lives in pure functions (`lstm.py`, `dropout.py`). Every LSTM
weight is a plain `Parameter` read through `lstm_layer`, so `torch.func.functional_call(model, fast, ...)`
can swap in dynamic weights (shared `[out, in]` or per-stream `[B, out, in]`) without touching the static
ones. The decoder reads the embedding's own tensor: one parameter, one name (`embedding.weight`).
"""
from __future__ import annotations

import math
from typing import Dict, List, NamedTuple, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..kernels.per_stream_lstm import WeightFactors
from ..kernels.table_ops import SKINNY_ROWS, SkinnyDecode, StreamLookup
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


def embed(tokens: Tensor, weight: Tensor) -> Tensor:
    """Look up `tokens [T, B]` in a shared `[V, E]` or per-stream `[B, V, E]` table."""
    if weight.dim() == 2:
        return F.embedding(tokens, weight)
    streams = torch.arange(tokens.shape[1], device=tokens.device)
    return StreamLookup.apply(weight, streams.unsqueeze(0), tokens)


def decode(h: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """Tied decoder: `h [T, B, E]` against the embedding table -> logits `[T, B, V]`."""
    rows_per_table = h.shape[0] * (h.shape[1] if weight.dim() == 2 else 1)
    if rows_per_table <= SKINNY_ROWS:
        logits = SkinnyDecode.apply(h, weight)
    elif weight.dim() == 2:
        # as one [T·B, E] matrix: F.linear of a non-contiguous 3-d `h` (per-stream LSTM output) is a bmm against the
        # table broadcast per stream, which reads it B times
        flat = h.reshape(-1, h.shape[-1])
        if bias.dim() == 1:  # the bias fused into the product
            return F.linear(flat, weight, bias).view(*h.shape[:-1], -1)
        logits = F.linear(flat, weight).view(*h.shape[:-1], -1)  # a per-stream bias [B, V], added below
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

    def forward(self, tokens: Tensor, state: LMState, detach_decoder_table: bool = False,
                factors: Optional[WeightFactors] = None, inputs: Optional[Dict[str, Tensor]] = None) -> LMOutput:
        """Read `tokens [T, B]` from `state`; dropout is on in `train()` mode only.

        `detach_decoder_table`: the decoder reads the tied table without a path back to it, so autograd never forms
        the table's dense gradient; a caller that wants it assembles it from ∂logits, `last_dropped` and the
        gradient of `embedded` (`kernels/factored_gradient.py`). `factors`: the caller's `WeightFactors`, to which
        the per-stream LSTM matrices it names hand their gradients as factors. `inputs`: the caller's dict, which
        gets, by parameter name, what each matrix multiplied at every step `[T, B, C]` (detached: data): a layer's
        input (`weight_ih`), its previous output (`weight_hh`), the decoder's input (the tied table).
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
            layer_input = x
            x, s = lstm_layer(x, state[l], layer.weight_ih, w_hh, layer.bias_ih, layer.bias_hh, factors)
            if inputs is not None:
                inputs[f"layers.{l}.weight_ih"] = layer_input.detach()
                inputs[f"layers.{l}.weight_hh"] = torch.cat([state[l][0].unsqueeze(0), x[:-1]]).detach()
            new_state.append(s)
            if l < self.num_layers - 1:
                x = locked_dropout(x, self.dropouth, training)
        raw = x
        dropped = locked_dropout(raw, self.dropout, training)
        if inputs is not None:
            inputs[self.TIED_TABLE] = dropped.detach()
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
