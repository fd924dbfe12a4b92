"""Gradients that are sums of a few outer products, and Krause's update applied to them without forming them.

Reading a segment of L tokens in B streams, the gradient of a per-stream matrix that multiplies one vector per step
is, per stream b, G_b = Σ_t d_tb u_tbᵀ = D_b U_b with D_b `[R, L]`, U_b `[L, C]` (`FactoredGradient`):
- an LSTM matrix: d_t its gates' gradient at step t, u_t the layer's input x_t (W_ih) or h_{t−1} (W_hh), as
  the recurrence's backward hands them to a `per_stream_lstm.WeightFactors`;
- the tied `[B, V, E]` table (`TableGradient`): D_b = ∂loss/∂logits `[V, L]`, U_b the decoder's input H_b `[L, E]`,
  plus the lookup part Σ_t e(x_tb) δ_tbᵀ on the rows read (x_tb the looked-up rows, δ_tb their gradients).

Formed densely (autograd), G is written to memory and read back by the update; the table's sparse lookup part is
added to it out of place (a profile shows: into a copy of the dense part). With the update's own passes that is
about 14 passes over the 26.6 MB table of `model=small` per segment where 6 must be made (`scripts/bench.py`'s
bound), and 11 over each LSTM matrix (7 factored). Here the update consumes D U as it goes (inside one compiled
kernel, or block by block while the block is in cache), then subtracts the table's lookup part on its few rows.
The step is Krause's (`maths/krause.py:krause_step`), scaled per stream by the cheap learned rule (s = 1: dynamic
evaluation):

    θ'[rows] = θ[rows] + s_decay · (flush·θ0 − flush ⊙ θ)[rows] − s_step · gain ⊙ (D[:, rows] U)
    θ'[x_t] −= s_step · gain[x_t] ⊙ δ_t                                       (the table only)

so one segment reads the table twice (logits, ∂h) and the update reads θ, flush, flush·θ0, gain and writes θ':
7 passes. (Reading rms alone and computing flush and gain in the kernel would make it 6, but measured slower:
10.0 against 9.1 ms per step, one thread; the kernel is partly compute-bound.)
For a large matrix the step is one kernel that `torch.compile` makes of the whole formula, the L-deep product
summed in registers: about half the time of the blocks, whose 5-deep products run far below the machine's
arithmetic speed (`model=small`, one thread: 9.5 against 19.9 ms per segment for the table; for the matrices of
a 3-layer LSTM of that size, 3.8 against 7.9 ms for one stream and 14.4 against 43.1 ms for five, against autograd's
product and two `addcmul`s). Compiling takes seconds, once
per process for every matrix size (marked dynamic), again for one stream against several, for a broadcast θ (a
stream's first segment) and for another dtype; shorter segments are padded to a depth already compiled. Where it
cannot be done (no C++ compiler), the blocks serve. What was compiled and whether compiling failed is the state of
a `FactoredStep`, which its caller (the update rule) owns.
"""
from __future__ import annotations

import logging
from typing import Callable, Dict, Optional, Set

import torch
from torch import Tensor
from torch.nn import functional as F

from ..maths.krause import krause_step
from .krause_dense import krause_dense_step

log = logging.getLogger(__name__)

# Rows per block: large enough that the Python loop costs little (R / BLOCK_ROWS blocks of six ops each), small
# enough that the block's gradient and new weights stay in cache between the ops.
BLOCK_ROWS = 512
# Matrices of at least this many elements per stream take the compiled step (seconds to compile, once per process,
# against milliseconds saved per segment): `model=small`'s table (6.7M) and its four LSTM matrices (160k–640k);
# smaller ones, e.g. the tests' tiny models, the blocks.
COMPILE_MIN_ELEMENTS = 1 << 17


def _row_major(t: Tensor) -> Tensor:
    """`t` with row-major strides, even along its size-1 dimensions (which `contiguous()` leaves as they are, and
    on which dynamo's guards would still tell two layouts apart)."""
    strides, size = [], 1
    for n in reversed(t.shape):
        strides.append(size)
        size *= n
    return t if t.stride() == tuple(reversed(strides)) else t.clone(memory_format=torch.contiguous_format)


class FactoredGradient:
    """∂loss/∂W = D U of a per-stream matrix `[B, R, C]` from `d [B, R, L]` and `u [B, L, C]`, never formed in
    full unless `dense()` is asked for. `overwrite`: the step may write θ' into θ's memory, nobody reading θ
    afterwards (the step checks that θ is contiguous)."""

    def __init__(self, d: Tensor, u: Tensor, overwrite: bool = False):
        # data, not a graph, in row-major strides: the compiled kernel then sees one kind of input whatever made them
        self.d, self.u, self.overwrite = _row_major(d.detach()), _row_major(u.detach()), overwrite

    @property
    def shape(self) -> torch.Size:
        return torch.Size((self.d.shape[0], self.d.shape[1], self.u.shape[2]))

    def rows(self, start: int, stop: int) -> Tensor:
        """The product's rows `start:stop`, `[B, stop − start, C]`."""
        return torch.bmm(self.d[:, start:stop], self.u)

    def dense(self) -> Tensor:
        """The whole gradient `[B, R, C]`, as autograd would have formed it."""
        return self.rows(0, self.shape[1])

    def stream_sum(self) -> Tensor:
        """Σ_b G_b `[R, C]`: one product of the streams' factors side by side (θ0's share of the streams' gradients)."""
        b, r, l = self.d.shape
        return self.d.transpose(0, 1).reshape(r, b * l) @ self.u.reshape(b * l, -1)

    def norms(self) -> Tensor:
        """‖G_b‖ per stream `[B]`, from L × L products: ‖D U‖² = Σ (DᵀD ⊙ U Uᵀ)."""
        return self._product_norm2().clamp(min=0.0).sqrt()

    def _product_norm2(self) -> Tensor:
        return (self.d.transpose(1, 2) @ self.d * (self.u @ self.u.transpose(1, 2))).sum((1, 2))

    def finish_step(self, out: Tensor, gain: Tensor, s_step: Tensor) -> Tensor:
        """What the step adds beyond the product's part (the table's lookup rows); `out` is θ' so far."""
        return out

    def times(self, m: Tensor) -> FactoredGradient:
        """G M for a `[C, C]` matrix M, still factored: D (U M)."""
        return FactoredGradient(self.d, self.u @ m, self.overwrite)


class TableGradient(FactoredGradient):
    """The tied table's gradient `[B, V, E]`: the decoder's D U plus the lookup part on the rows read."""

    def __init__(self, d_logits: Tensor, hidden: Tensor, tokens: Tensor, d_embedded: Tensor, overwrite: bool = False):
        # d_logits [L, B, V], hidden [L, B, E] (the decoder's input), tokens [L, B] (the rows looked up),
        # d_embedded [L, B, E] (the gradient of the looked-up rows)
        super().__init__(d_logits.permute(1, 2, 0), hidden.transpose(0, 1), overwrite)
        self.tokens, self.d_embedded = tokens, d_embedded
        self._delta = d_embedded.transpose(0, 1)  # [B, L, E]

    def lookup_index(self):
        streams = torch.arange(self.tokens.shape[1], device=self.tokens.device).expand_as(self.tokens)
        return streams.reshape(-1), self.tokens.reshape(-1)

    def dense(self) -> Tensor:
        g = super().dense()
        return g.index_put_(self.lookup_index(), self.d_embedded.reshape(-1, g.shape[-1]), accumulate=True)

    def stream_sum(self) -> Tensor:
        g = super().stream_sum()
        return g.index_add_(0, self.tokens.reshape(-1), self.d_embedded.reshape(-1, g.shape[-1]))

    def _product_norm2(self) -> Tensor:
        """Beyond the decoder's part: the cross term 2 Σ_t δ_t · (D U)[x_t] and ‖Σ_t e(x_t) δ_tᵀ‖² =
        Σ_{x_t = x_u} δ_t · δ_u."""
        tokens = self.tokens.t()  # [B, L]
        looked_up = torch.gather(self.d, 1, tokens.unsqueeze(-1).expand(-1, -1, self.d.shape[2])) @ self.u
        cross = (looked_up * self._delta).sum((1, 2))
        same = (tokens.unsqueeze(2) == tokens.unsqueeze(1)).to(self._delta.dtype)
        lookup = (self._delta @ self._delta.transpose(1, 2) * same).sum((1, 2))
        return super()._product_norm2() + 2.0 * cross + lookup

    def times(self, m: Tensor) -> TableGradient:
        """G M, still factored: the decoder's D (H M) and the lookup rows' δ_t M."""
        return TableGradient(self.d.permute(2, 0, 1), (self.u @ m).transpose(0, 1), self.tokens, self.d_embedded @ m,
                             self.overwrite)

    def finish_step(self, out: Tensor, gain: Tensor, s_step: Tensor) -> Tensor:
        streams, rows = self.lookup_index()
        step = gain[rows] * self.d_embedded.reshape(-1, out.shape[-1]) * s_step.view(-1)[streams].unsqueeze(-1)
        return out.index_put_((streams, rows), step.neg_(), accumulate=True)


def _blocked_step(theta: Tensor, flush: Tensor, anchored: Tensor, gain: Tensor, d: Tensor, h: Tensor,
                  s_decay: Tensor, s_step: Tensor, block_rows: int = BLOCK_ROWS) -> Tensor:
    """θ + s_decay · (anchored − flush ⊙ θ) − s_step · gain ⊙ (d h) for `d [B, R, L]`, `h [B, L, C]` and
    `s_* [B, 1, 1]`, a block of rows at a time: the block's product, then the dense step on it while it is in
    cache."""
    out = torch.empty(d.shape[0], d.shape[1], h.shape[2], dtype=theta.dtype, device=theta.device)
    s_decay, s_step = s_decay.view(-1), s_step.view(-1)
    for start in range(0, out.shape[1], block_rows):
        rows = slice(start, min(start + block_rows, out.shape[1]))
        krause_dense_step(theta[:, rows], anchored[rows], flush[rows], gain[rows], torch.bmm(d[:, rows], h),
                          s_decay, s_step, out=out[:, rows])
    return out


def _fused_step(theta: Tensor, flush: Tensor, anchored: Tensor, gain: Tensor, d: Tensor, h: Tensor,
                s_decay: Tensor, s_step: Tensor) -> Tensor:
    """The same, written for `torch.compile`, which sums the product inside the elementwise loop instead of
    forming it. Run eagerly (where the compiler gave up), it takes the blocks: the product would be `[B, R, L, C]`."""
    if not torch.compiler.is_compiling():
        return _blocked_step(theta, flush, anchored, gain, d, h, s_decay, s_step)
    return krause_step(theta, anchored, flush, gain, (d.unsqueeze(-1) * h.unsqueeze(1)).sum(2), s_decay, s_step)


def _fused_step_into(theta: Tensor, *args: Tensor) -> Tensor:
    """`_fused_step` written into θ's own memory: the kernel reads each coordinate and writes it back, where a new
    tensor's lines would first be read in (about a pass less)."""
    return theta.copy_(_fused_step(theta, *args))


class FactoredStep:
    """Krause's step on factored gradients, with its state owned by its caller: the compiled kernels, the product
    depths L compiled so far and whether compiling failed (then the blocks serve from there on). Dynamo keeps
    what it compiled with the step functions' code, so a second `FactoredStep` does not compile again."""

    def __init__(self, compile_min: int = COMPILE_MIN_ELEMENTS, block_rows: int = BLOCK_ROWS):
        self.compile_min, self.block_rows = compile_min, block_rows
        self.failed = False
        self.depths: Set[int] = set()
        self._kernels: Dict[str, Callable] = {}

    def _kernel(self, fn: Callable) -> Callable:
        if fn.__name__ not in self._kernels:  # compiling is lazy: the first call compiles
            self._kernels[fn.__name__] = torch.compile(fn, dynamic=False)  # dynamic only where marked
        return self._kernels[fn.__name__]

    def _kernel_args(self, theta, flush, anchored, gain, d: Tensor, u: Tensor):
        """The kernel's inputs, the matrix's size marked dynamic and L not: one kernel serves the table and every
        LSTM matrix, while its L-deep sum stays unrolled (a symbolic L measured 1.8× slower: 14.6 against 8.3 ms on
        the table). A segment shorter than a depth compiled before (an article's or a stream's end) is padded with
        zero terms up to it rather than compiled anew."""
        depth = d.shape[2]
        deeper = [n for n in self.depths if n > depth]
        if deeper and depth not in self.depths:
            pad = min(deeper) - depth
            d, u = F.pad(d, (0, pad)), F.pad(u, (0, 0, 0, pad))
        self.depths.add(d.shape[2])
        for t, dims in ((theta, (1, 2)), (flush, (0, 1)), (anchored, (0, 1)), (gain, (0, 1)), (d, (1,)), (u, (2,))):
            torch._dynamo.mark_dynamic(t, dims)
        return theta, flush, anchored, gain, d, u

    def product_step(self, theta, flush, anchored, gain, grad: FactoredGradient, s_decay, s_step) -> Tensor:
        """The step with the product's part of G: compiled for a large matrix (unless compiling has failed), into
        θ where `grad.overwrite` allows it; else blocks, into a new tensor."""
        args = (theta, flush, anchored, gain, grad.d, grad.u, s_decay, s_step)
        if flush.numel() >= self.compile_min and not self.failed:
            # a broadcast view of θ0 (a stream's first segment) or any other view is never written into
            fn = _fused_step_into if grad.overwrite and theta.is_contiguous() else _fused_step
            try:
                return self._kernel(fn)(*self._kernel_args(*args[:6]), s_decay, s_step)
            except torch.OutOfMemoryError:
                raise  # not the compiler's failure: the blocks would need more memory still
            except Exception as err:  # e.g. no C++ compiler: the blocks compute the same
                self.failed = True
                log.warning("the compiled weight update is unavailable (%s: %s); updating block by block",
                            type(err).__name__, str(err).splitlines()[0] if str(err) else "")
        return _blocked_step(*args, block_rows=self.block_rows)

    def __call__(self, theta: Tensor, flush: Tensor, anchored: Tensor, gain: Tensor, grad: FactoredGradient,
                 s_decay: Optional[Tensor] = None, s_step: Optional[Tensor] = None) -> Tensor:
        """θ + s_decay · (anchored − flush ⊙ θ) − s_step · gain ⊙ G for a per-stream matrix `θ [B, R, C]` (a
        broadcast view is fine), the rule's per-coordinate constants `[R, C]` (anchored = flush ⊙ θ0) and
        per-stream scales `s_* [B]` (None: 1, Krause's step), into a new tensor or, where `grad.overwrite`,
        possibly into θ; G stays factored (see the module's docstring).
        The product's part is taken by the compiled kernel for matrices of at least `compile_min` elements, else
        in blocks of `block_rows` rows; a table's lookup rows are then stepped on those rows."""
        s_decay, s_step = (_stream_scale(s, grad.shape[0], theta) for s in (s_decay, s_step))
        out = self.product_step(theta, flush, anchored, gain, grad, s_decay, s_step)
        return grad.finish_step(out, gain, s_step)


def _stream_scale(s: Optional[Tensor], streams: int, like: Tensor) -> Tensor:
    """`s [B]` (None: ones) as a fresh `[B, 1, 1]` tensor: a view of the cheap rule's `[2, B, tensors]` scales
    would differ per tensor in strides and offset, and the compiled kernel would be recompiled for each."""
    if s is None:
        return torch.ones(streams, 1, 1, dtype=like.dtype, device=like.device)
    return s.clone(memory_format=torch.contiguous_format).view(-1, 1, 1)


__all__ = ["BLOCK_ROWS", "COMPILE_MIN_ELEMENTS", "FactoredGradient", "FactoredStep", "TableGradient"]
