"""One LSTM layer with per-stream weights as a single autograd Function.

With per-stream recurrent weights `w_hh: [B, 4H, H]` every time step reads all B matrices (32 MiB for
B=8, H=512): the recurrence is memory-bound, and autograd's step-by-step graph makes it much worse (a
weight-gradient accumulation of that size at every step, a dozen small kernels per gate). Here:

- forward: the input projection of all steps is one batched matmul; then per step one in-place batched
  matrix-vector product (`gates += h @ w_hh^T`) and five fused gate kernels. The activated gates and the
  cells are saved for backward.
- backward: the gate derivatives of all steps are formed before the loop in a few large kernels; the
  loop back through time is then one batched vector-matrix product (`dh = dgates @ w_hh`) and four small
  kernels per step. The weight gradients are formed once per segment, each as one batched matmul over the
  time steps: `dW_hh[b] = sum_t dgates[b, t] ⊗ h[b, t-1]` = `[B, 4H, T] @ [B, T, H]`, and likewise
  `dW_ih`, `dx` (or handed over as those two factors, below); the bias gradients are one sum over time.
- cache blocking (CPU): the recurrence runs over groups of streams whose recurrent matrices fit in part
  of the last-level cache, so that a group's matrices are read from cache, not memory, at every step
  (`chunk_bytes`, by default `machine_chunk_bytes()`; measured ~2x on the matrix-vector products at B=8,
  H=512 on a 32 MiB L3). The Python loop is over time steps and these few groups, never over single streams
  or coordinates.
- weights that are one matrix expanded over the streams (fresh fast weights, stride 0) are read once, as
  shared weights, while their gradient stays per stream.

Double backward (`meta.second_order=true` differentiates the meta-loss through g = ∂ℓ/∂θ): when this
backward runs with `create_graph=True` (grad mode on inside backward) it recomputes the layer from the
saved inputs with the reference ops (`maths/lstm.py`) and returns `autograd.grad(..., create_graph=True)`, so
Hessian-vector products are exact. The first-order path pays nothing for it.

Factored weight gradients: given a `WeightFactors` (the caller's object, passed in), the backward hands the
gradients of the per-stream weights it names over to it as factors instead of returning them.
"""
from __future__ import annotations

import functools
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Tuple

import torch
from torch import Tensor

from ..maths.lstm import lstm_layer_reference

State = Tuple[Tensor, Tensor]


@functools.cache
def _last_level_cache_bytes() -> int:
    """Largest CPU cache reported by Linux sysfs (read once, at the first call), or 32 MiB when it cannot be
    read."""
    best = 0
    for index in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*"):
        try:
            text = (index / "size").read_text().strip()
            scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1], 1)
            best = max(best, int(text.rstrip("KMG")) * scale)
        except (OSError, ValueError, IndexError):
            continue
    return best or 32 << 20


def machine_chunk_bytes() -> int:
    """The default group size of per-stream recurrences on CPU: streams whose recurrent matrices take at most a
    quarter of the last-level cache (the rest is shared with the activations and other processes)."""
    return _last_level_cache_bytes() // 4


def _is_broadcast(w: Tensor) -> bool:
    """`[B, ...]` that is one matrix expanded over the streams (fresh fast weights before any update)."""
    return w.shape[0] == 1 or w.stride(0) == 0


def _stream_chunks(w: Tensor, batch: int, per_stream: bool, chunk_bytes: Optional[int]) -> List[slice]:
    """Groups of streams of at most `chunk_bytes` of recurrent matrices each (None: all streams at once)."""
    if not per_stream or w.device.type != "cpu" or chunk_bytes is None:
        return [slice(0, batch)]
    size = max(1, chunk_bytes // max(1, w[0].numel() * w.element_size()))
    return [slice(b, min(b + size, batch)) for b in range(0, batch, size)]


def _project(x: Tensor, w_ih: Tensor, b_ih: Optional[Tensor], b_hh: Optional[Tensor]) -> Tensor:
    """Input projection of every step, stream-major `[B, T, 4H]`: `x @ w_ih^T + b_ih + b_hh` (outside autograd).

    Per-stream weights that are one matrix expanded over the streams are read once, as a shared matrix.
    """
    xb = x.transpose(0, 1)  # [B, T, I]
    if w_ih.dim() == 3 and not _is_broadcast(w_ih):
        xw = torch.bmm(xb, w_ih.transpose(1, 2))
    else:
        xw = torch.matmul(xb, (w_ih[0] if w_ih.dim() == 3 else w_ih).t())
    for b in (b_ih, b_hh):
        if b is not None:
            xw = xw.add_(b.unsqueeze(1) if b.dim() == 2 else b)  # per-stream [B, 4H] broadcasts over time
    return xw


class WeightFactors:
    """The weights whose gradients are handed over as factors, and the factors found: name -> (d [B, 4H, T],
    u [B, T, C]) with ∂loss/∂W_b = d_b u_b. A weight the recurrence read more than once has its factors
    concatenated over the steps."""

    def __init__(self, weights: Mapping[str, Tensor]):
        self.weights = dict(weights)
        self.seen: List[str] = []  # in the order the recurrences read them
        self.factors: Dict[str, Tuple[Tensor, Tensor]] = {}

    def claim(self, w: Tensor) -> Optional[str]:
        """The name of `w` (identity, not value) when its gradient is to be factored; noted as seen."""
        for name, t in self.weights.items():
            if t is w:
                if name not in self.seen:
                    self.seen.append(name)
                return name
        return None

    def add(self, name: str, d: Tensor, u: Tensor) -> None:
        """Adds a read's factors: a second backward over the same graph (`retain_graph`) would add them again."""
        if name in self.factors:
            d0, u0 = self.factors[name]
            d, u = torch.cat([d0, d], dim=2), torch.cat([u0, u], dim=1)
        self.factors[name] = (d, u)


def _reference_outputs(x, h0, c0, w_ih, w_hh, b_ih, b_hh) -> Tuple[Tensor, Tensor, Tensor]:
    out, (h, c) = lstm_layer_reference(x, (h0, c0), w_ih, w_hh, b_ih, b_hh)
    return out, h, c


class PerStreamLSTM(torch.autograd.Function):
    """`(x [T, B, I], h0, c0 [B, H], w_ih, w_hh, b_ih, b_hh, factors, chunk_bytes) -> (out [T, B, H], h_T, c_T)`.

    Each weight is shared (`[4H, I]`, `[4H, H]`, `[4H]`) or per stream (`[B, 4H, I]`, `[B, 4H, H]`,
    `[B, 4H]`); biases may be None. Gate order is PyTorch's (i, f, g, o). `factors` (a `WeightFactors` or None):
    the per-stream weights whose first-order gradients are handed over to it instead of returned.
    `chunk_bytes`: the size of the groups of streams the recurrence runs over on CPU (None: all at once).
    """

    @staticmethod
    def forward(ctx, x, h0, c0, w_ih, w_hh, b_ih, b_hh, factors, chunk_bytes):
        T, B, _ = x.shape
        H = h0.shape[-1]
        per_stream = w_hh.dim() == 3 and not _is_broadcast(w_hh)
        w = w_hh if per_stream else (w_hh[0] if w_hh.dim() == 3 else w_hh)
        acts = _project(x, w_ih, b_ih, b_hh).contiguous()  # [B, T, 4H]: then gates
        cells = x.new_empty(B, T + 1, H)
        out = x.new_empty(B, T, H)
        cells[:, 0] = c0
        for sl in _stream_chunks(w, B, per_stream, chunk_bytes):
            wt = w[sl].transpose(1, 2) if per_stream else w.t()  # h @ w^T, row vectors
            h = h0[sl]
            for t in range(T):
                a = acts[sl, t]
                if per_stream:
                    a.unsqueeze(1).baddbmm_(h.unsqueeze(1), wt)
                else:
                    a.addmm_(h, wt)
                a[:, : 2 * H].sigmoid_()
                a[:, 2 * H : 3 * H].tanh_()
                a[:, 3 * H :].sigmoid_()
                c = cells[sl, t + 1]
                torch.mul(a[:, H : 2 * H], cells[sl, t], out=c)
                c.addcmul_(a[:, :H], a[:, 2 * H : 3 * H])
                h = out[sl, t]
                torch.tanh(c, out=h)
                h.mul_(a[:, 3 * H :])
        ctx.save_for_backward(x, h0, c0, w_ih, w_hh, b_ih, b_hh, acts, cells, out)
        ctx.per_stream, ctx.chunk_bytes = per_stream, chunk_bytes
        names = [factors.claim(w) if factors is not None and w.dim() == 3 else None for w in (w_ih, w_hh)]
        ctx.factored = (factors, names) if any(names) else None  # None: every weight's gradient is formed
        return out.transpose(0, 1), out[:, T - 1].clone(), cells[:, T].clone()

    @staticmethod
    def backward(ctx, d_out, d_hT, d_cT):
        x, h0, c0, w_ih, w_hh, b_ih, b_hh, acts, cells, out = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph=True: a backward that is itself differentiable
            if ctx.factored is not None:
                raise RuntimeError("factored weight gradients are first-order only: differentiate the weights' "
                                   "gradients (create_graph=True) without a WeightFactors")
            return _differentiable_backward(ctx, (x, h0, c0, w_ih, w_hh, b_ih, b_hh), (d_out, d_hT, d_cT))
        B, T, G = acts.shape
        H = G // 4
        per_stream = ctx.per_stream
        w = w_hh if per_stream else (w_hh[0] if w_hh.dim() == 3 else w_hh)
        # Gate derivatives of all steps at once; per step then:
        #   dh += d_out[t];  dc += dh * k;  dgates[:3H] = dc * m;  dgates[3H:] = dh * n;  dc *= f;  dh = dgates @ w
        i, f, g, o = acts.unflatten(-1, (4, H)).unbind(2)
        tc = torch.tanh(cells[:, 1:])
        m = torch.stack([g * i * (1 - i), cells[:, :-1] * f * (1 - f), i * (1 - g * g)], dim=2)  # [B, T, 3, H]
        n = tc * o * (1 - o)
        k = o * (1 - tc * tc)
        del tc
        d_out = d_out.transpose(0, 1)  # [B, T, H]
        dgates = acts.new_empty(B, T, G)
        dh_all = d_hT.clone()
        dc_all = d_cT.clone()
        for sl in _stream_chunks(w, B, per_stream, ctx.chunk_bytes):
            w_sl = w[sl] if per_stream else w
            dh, dc = dh_all[sl], dc_all[sl]
            for t in range(T - 1, -1, -1):
                dh.add_(d_out[sl, t])
                dc.addcmul_(dh, k[sl, t])
                dg = dgates[sl, t]
                torch.mul(m[sl, t], dc.unsqueeze(1), out=dg[:, : 3 * H].unflatten(-1, (3, H)))
                torch.mul(dh, n[sl, t], out=dg[:, 3 * H :])
                dc.mul_(f[sl, t])
                if per_stream:
                    torch.bmm(dg.unsqueeze(1), w_sl, out=dh.unsqueeze(1))
                else:
                    torch.mm(dg, w_sl, out=dh)
        need = list(ctx.needs_input_grad)
        dg_t = dgates.transpose(1, 2)  # [B, 4H, T]
        d_x = d_w_ih = d_w_hh = d_b_ih = d_b_hh = None
        if need[0]:
            d_x = (torch.bmm(dgates, w_ih) if w_ih.dim() == 3 else torch.matmul(dgates, w_ih)).transpose(0, 1)
        if ctx.factored is not None:  # hand the factors over instead of forming dW = dgates^T [x | h_prev]
            factors, (name_ih, name_hh) = ctx.factored
            ctx.factored = None  # the node no longer holds the caller's WeightFactors (and the weights it names)
            d = dg_t.contiguous()
            if name_ih is not None:
                factors.add(name_ih, d, x.transpose(0, 1).contiguous())
                need[3] = False
            if name_hh is not None:
                factors.add(name_hh, d, torch.cat([h0.unsqueeze(1), out[:, :-1]], dim=1))
                need[4] = False
        if need[3]:
            xb = x.transpose(0, 1)
            if w_ih.dim() == 3:  # [B, 4H, T] @ [B, T, I]
                d_w_ih = torch.bmm(dg_t, xb)
            else:
                d_w_ih = dgates.reshape(B * T, G).t() @ xb.reshape(B * T, -1)
        if need[4]:
            h_prev = torch.cat([h0.unsqueeze(1), out[:, :-1]], dim=1)  # [B, T, H]
            if w_hh.dim() == 3:  # one batched matmul over time: [B, 4H, T] @ [B, T, H]
                d_w_hh = torch.bmm(dg_t, h_prev)
            else:
                d_w_hh = dgates.reshape(B * T, G).t() @ h_prev.reshape(B * T, H)
        if need[5] or need[6]:
            per_b = dgates.sum(1)  # [B, 4H]
            d_b_ih = (per_b if b_ih.dim() == 2 else per_b.sum(0)) if need[5] else None
            d_b_hh = (per_b if b_hh.dim() == 2 else per_b.sum(0)) if need[6] else None
        return (d_x, dh_all if need[1] else None, dc_all if need[2] else None, d_w_ih, d_w_hh, d_b_ih, d_b_hh,
                None, None)


def _differentiable_backward(ctx, inputs, grad_outputs):
    wanted = [j for j, t in enumerate(inputs) if ctx.needs_input_grad[j] and t is not None and t.requires_grad]
    grads: list = [None] * (len(inputs) + 2)  # none for the factors and chunk_bytes arguments
    if not wanted:
        return tuple(grads)
    with torch.enable_grad():
        outs = _reference_outputs(*inputs)
        got = torch.autograd.grad(outs, [inputs[j] for j in wanted], grad_outputs, create_graph=True,
                                  allow_unused=True)
    for j, gr in zip(wanted, got):
        grads[j] = gr if gr is not None else torch.zeros_like(inputs[j])
    return tuple(grads)


def per_stream_lstm_layer(
    x: Tensor, state: State, w_ih: Tensor, w_hh: Tensor, b_ih: Optional[Tensor], b_hh: Optional[Tensor],
    factors: Optional[WeightFactors] = None, chunk_bytes: Optional[int] = None,
) -> Tuple[Tensor, State]:
    """One LSTM layer over `x [T, B, I]` from `state = (h [B, H], c [B, H])`, any weight per stream or shared.

    Returns the outputs `[T, B, H]` and the final `(h, c)`, like `maths.lstm.lstm_layer_reference`. `factors`:
    see `PerStreamLSTM`; `chunk_bytes` None takes `machine_chunk_bytes()`.
    """
    h0, c0 = state
    chunk = machine_chunk_bytes() if chunk_bytes is None else chunk_bytes
    out, h, c = PerStreamLSTM.apply(x, h0, c0, w_ih, w_hh, b_ih, b_hh, factors, chunk)
    return out, (h, c)


__all__ = ["PerStreamLSTM", "WeightFactors", "machine_chunk_bytes", "per_stream_lstm_layer"]
