"""The mean squared gradient v_i of every dynamic coordinate, measured once on training data (Krause et al.).

rms = sqrt(v) normalises the update (ĝ = g / (rms + ε)) and sets the decay rates (decrate = rms / the mean over
tensors of each tensor's mean rms, `decay_norm`); v is also the diagonal Fisher of the EWC penalty. As in
Krause's `dynamiceval.py`, g is the gradient of the mean loss of a batch of B streams × L tokens of training
text (B = 100, L = the segment length, by default), so the hyperparameters are on his (new) scale.

The same batches give, for every matrix, the second moment E[u uᵀ] of what it multiplied (its inputs: the model's
`inputs`), which input-side whitening (`rule.whiten`) reads. Statistics saved before it existed have none.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Dict, Mapping, Optional, Sequence

import torch
from torch import Tensor, nn
from torch.func import functional_call

from ..data import batchify, get_batch
from ..model import detach_state, static_weights, token_nll


@dataclass
class GradStats:
    v: Dict[str, Tensor]  # name -> mean squared gradient, shape of the parameter
    tokens: int
    input_moments: Dict[str, Tensor] = field(default_factory=dict)  # matrix name -> E[u uᵀ] of its inputs, [C, C]

    @property
    def mean_v(self) -> float:
        total = sum(float(t.double().sum()) for t in self.v.values())
        return total / sum(t.numel() for t in self.v.values())

    @property
    def mean_rms(self) -> float:
        """The mean of rms over every coordinate (a feature scale of the meta-learner)."""
        total = sum(float(t.double().sqrt().sum()) for t in self.v.values())
        return total / sum(t.numel() for t in self.v.values())

    @property
    def decay_norm(self) -> float:
        """Krause's normaliser of the decay rates: the mean over tensors of each tensor's mean rms."""
        return sum(float(t.double().sqrt().mean()) for t in self.v.values()) / len(self.v)

    def state_dict(self) -> dict:
        return {"v": {n: t.detach().cpu() for n, t in self.v.items()}, "tokens": self.tokens,
                "input_moments": {n: t.detach().cpu() for n, t in self.input_moments.items()}}

    @staticmethod
    def from_state_dict(d: Mapping, device=None) -> GradStats:
        moments = d.get("input_moments", {})  # none in statistics saved before whitening
        return GradStats({n: t.to(device) for n, t in d["v"].items()}, int(d["tokens"]),
                         {n: t.to(device) for n, t in moments.items()})

    def restricted(self, names: Sequence[str]) -> GradStats:
        """The statistics of `names` only: decay_norm and the means are then over those tensors alone. v of a
        coordinate does not depend on which others are measured (the same batches, the same loss)."""
        self.check_covers(names)
        return GradStats({n: self.v[n] for n in names}, self.tokens,
                         {n: t for n, t in self.input_moments.items() if n in names})

    def check_covers(self, names: Sequence[str]) -> None:
        missing = [n for n in names if n not in self.v]
        if missing:
            raise ValueError(
                f"the saved gradient statistics do not cover dynamic parameters {missing}; "
                "they are recomputed when meta.dynamic changes (delete 'grad_stats' from the checkpoint)"
            )


def measure_grad_stats(model: nn.Module, names: Sequence[str], ids: Tensor, streams: int, seg_len: int,
                       max_tokens: Optional[int] = None,
                       on_batch: Optional[Callable[[int], None]] = None) -> GradStats:
    """Krause et al.'s statistics: `ids` cut into `streams` contiguous streams (`batchify`), read `seg_len`
    tokens at a time with (h, c) carried over, in eval mode; g is the gradient of the batch's mean loss (over
    streams × seg_len tokens) w.r.t. the static weights, and v the mean over batches of g²; each matrix's
    `input_moments` the mean over the tokens read of u uᵀ, u what it multiplied. Reads the whole of
    `ids`, or batches until at least `max_tokens` tokens. Shared weights and one backward per batch: about the
    cost of training on the same tokens. Every rank measures the same thing (deterministic, no collectives)."""
    if ids.numel() // streams < 3:  # the loop reads rows while i < rows - 2
        raise ValueError(f"{ids.numel()} tokens are too few for {streams} gradient-statistics streams "
                         "(meta.gradstat_streams / eval.gradstat_streams): use fewer streams")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    leaves = {n: t.detach().requires_grad_() for n, t in static_weights(model, names).items()}
    sums = {n: torch.zeros_like(t) for n, t in leaves.items()}
    moments: Dict[str, Tensor] = {}
    data = batchify(ids, streams).to(device)
    state = model.init_state(streams)
    batches, tokens, i = 0, 0, 0
    try:
        # as dynamiceval.py: batches while i < rows - 2 (its last target row is never an input)
        while i < data.shape[0] - 2 and (max_tokens is None or tokens < max_tokens):
            x, y = get_batch(data, i, seg_len)
            inputs: Dict[str, Tensor] = {}
            with torch.enable_grad():
                out = functional_call(model, leaves, (x, state), {"inputs": inputs})
                loss = token_nll(out.logits, y).mean()
                grads = torch.autograd.grad(loss, list(leaves.values()))
            for n, g in zip(leaves, grads):
                sums[n].addcmul_(g, g)
            for n, u in inputs.items():
                if n in leaves:
                    u = u.reshape(-1, u.shape[-1])
                    moments[n] = u.t() @ u + moments[n] if n in moments else u.t() @ u
            state = detach_state(out.state)
            batches += 1
            tokens += x.numel()
            i += x.shape[0]
            if on_batch is not None:  # progress bars
                on_batch(x.numel())
    finally:
        model.train(was_training)
    return GradStats({n: s / batches for n, s in sums.items()}, tokens, {n: s / tokens for n, s in moments.items()})
