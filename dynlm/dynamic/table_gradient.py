"""The tied table's gradient in factored form, and Krause's update applied to it without ever forming it.

For a segment of L tokens in B streams, the gradient of the tied `[B, V, E]` table is, per stream b,

    G_b = D_bᵀ H_b + Σ_t e(x_tb) δ_tbᵀ

with D_b = ∂loss/∂logits `[L, V]`, H_b the decoder's input `[L, E]`, x_tb the looked-up rows and δ_tb their
gradients. Formed densely (autograd), G is written to memory, read back by the update, and the sparse lookup part
is added to it (out of place, a profile shows: into a copy of the dense part): with the update's own passes,
about 14 passes over the 26.6 MB table of `model=small` per segment where 6 must be made (`scripts/bench.py`'s
bound). Here the update consumes D_bᵀ H_b as it goes (inside one compiled kernel, or block by block while the
block is in cache), then subtracts the lookup part on its few rows. The step is Krause's, scaled per stream by
the cheap learned rule (s = 1: dynamic evaluation):

    θ'[rows] = θ[rows] + s_decay · (flush·θ0 − flush ⊙ θ)[rows] − s_step · gain ⊙ (D[:, rows]ᵀ H)
    θ'[x_t] −= s_step · gain[x_t] ⊙ δ_t

so one segment reads the table twice (logits, ∂h) and the update reads θ, flush, flush·θ0, gain and writes θ':
7 passes. (Reading rms alone and computing flush and gain in the kernel would make it 6, but measured slower:
10.0 against 9.1 ms per step, one thread; the kernel is partly compute-bound.)
For a large table the step is one kernel that `torch.compile` makes of the whole formula, the L-deep product
summed in registers: about half the time of the blocks, whose 5-deep products run far below the machine's
arithmetic speed (`model=small`, one thread: 9.5 against 19.9 ms per segment). Compiling takes seconds, again
when the segment length, the strides (a broadcast θ, in place or not) or the dtype change (after a second length
dynamo compiles for any length); where it cannot be done (no C++ compiler), the blocks serve.
"""
from __future__ import annotations

import logging
from typing import Optional

import torch
from torch import Tensor

log = logging.getLogger(__name__)

# Rows of the table per block: large enough that the Python loop costs little (V / BLOCK_ROWS blocks of six ops
# each), small enough that the block's gradient and new weights stay in cache between the ops.
BLOCK_ROWS = 512
# Tables of at least this many elements per stream take the compiled step (a few seconds to compile, once per
# shape, against milliseconds saved per segment); smaller ones, e.g. the tests' tiny models, the blocks.
COMPILE_MIN_ELEMENTS = 1 << 20


class TableGradient:
    """∂loss/∂W of a per-stream table `[B, V, E]`, never formed in full unless `dense()` is asked for."""

    def __init__(self, d_logits: Tensor, hidden: Tensor, tokens: Tensor, d_embedded: Tensor, overwrite: bool = False):
        self.d_logits = d_logits  # [L, B, V]
        self.hidden = hidden  # [L, B, E]: the decoder's input
        self.tokens = tokens  # [L, B]: the rows looked up
        self.d_embedded = d_embedded  # [L, B, E]: the gradient of the looked-up rows
        # the step may write θ' into θ's memory: nobody reads θ afterwards (the step checks it is contiguous)
        self.overwrite = overwrite
        self._d = d_logits.permute(1, 2, 0).contiguous()  # [B, V, L]
        self._h = hidden.transpose(0, 1)  # [B, L, E]
        self._delta = d_embedded.transpose(0, 1)  # [B, L, E]

    @property
    def shape(self) -> torch.Size:
        return torch.Size((self._d.shape[0], self._d.shape[1], self._h.shape[2]))

    def decoder_rows(self, start: int, stop: int) -> Tensor:
        """The decoder's part of rows `start:stop`, `[B, stop − start, E]`."""
        return torch.bmm(self._d[:, start:stop], self._h)

    def lookup_index(self):
        streams = torch.arange(self.tokens.shape[1], device=self.tokens.device).expand_as(self.tokens)
        return streams.reshape(-1), self.tokens.reshape(-1)

    def dense(self) -> Tensor:
        """The whole gradient `[B, V, E]`, as autograd would have formed it."""
        g = self.decoder_rows(0, self.shape[1])
        return g.index_put_(self.lookup_index(), self.d_embedded.reshape(-1, g.shape[-1]), accumulate=True)

    def norms(self) -> Tensor:
        """‖G_b‖ per stream `[B]`, from L × L products: ‖DᵀH‖² = Σ (DDᵀ ⊙ HHᵀ), the cross term
        2 Σ_t δ_t · (DᵀH)[x_t], and ‖Σ_t e(x_t) δ_tᵀ‖² = Σ_{x_t = x_u} δ_t · δ_u."""
        tokens = self.tokens.t()  # [B, L]
        decoder = (self._d.transpose(1, 2) @ self._d * (self._h @ self._h.transpose(1, 2))).sum((1, 2))
        looked_up = torch.gather(self._d, 1, tokens.unsqueeze(-1).expand(-1, -1, self._d.shape[2])) @ self._h
        cross = (looked_up * self._delta).sum((1, 2))
        same = (tokens.unsqueeze(2) == tokens.unsqueeze(1)).to(self._delta.dtype)
        lookup = (self._delta @ self._delta.transpose(1, 2) * same).sum((1, 2))
        return (decoder + 2.0 * cross + lookup).clamp(min=0.0).sqrt()


def _blocked_step(theta: Tensor, flush: Tensor, anchored: Tensor, gain: Tensor, d: Tensor, h: Tensor,
                  s_decay: Tensor, s_step: Tensor, block_rows: int = BLOCK_ROWS) -> Tensor:
    """θ + s_decay · (anchored − flush ⊙ θ) − s_step · gain ⊙ (d h) for `d [B, V, L]`, `h [B, L, E]` and
    `s_* [B, 1, 1]`, a block of rows at a time."""
    out = torch.empty(d.shape[0], d.shape[1], h.shape[2], dtype=theta.dtype, device=theta.device)
    for start in range(0, out.shape[1], block_rows):
        stop = min(start + block_rows, out.shape[1])
        block, old = out[:, start:stop], theta[:, start:stop]
        torch.addcmul(anchored[start:stop], flush[start:stop], old, value=-1.0, out=block)
        block.mul_(s_decay).add_(old)
        step = torch.bmm(d[:, start:stop], h).mul_(gain[start:stop])
        block.addcmul_(step, s_step, value=-1.0)
    return out


def _fused_step(theta: Tensor, flush: Tensor, anchored: Tensor, gain: Tensor, d: Tensor, h: Tensor,
                s_decay: Tensor, s_step: Tensor) -> Tensor:
    """The same, written for `torch.compile`, which sums the product inside the elementwise loop instead of
    forming it. Run eagerly (where the compiler gave up), it takes the blocks: the product would be `[B, V, L, E]`."""
    if not torch.compiler.is_compiling():
        return _blocked_step(theta, flush, anchored, gain, d, h, s_decay, s_step)
    g = (d.unsqueeze(-1) * h.unsqueeze(1)).sum(2)
    return theta + s_decay * (anchored - flush * theta) - s_step * gain * g


def _fused_step_into(theta: Tensor, *args: Tensor) -> Tensor:
    """`_fused_step` written into θ's own memory: the kernel reads each coordinate and writes it back, where a new
    tensor's lines would first be read in (about a pass less)."""
    return theta.copy_(_fused_step(theta, *args))


_compiled = {"failed": False}


def _decoder_step(theta, flush, anchored, gain, grad: TableGradient, s_decay, s_step, block_rows: int,
                  compile_min: int) -> Tensor:
    """The decoder's part of the step: compiled for a large table (once compiling has not failed), into θ where
    `grad.overwrite` allows it; else blocks, into a new tensor."""
    args = (theta, flush, anchored, gain, grad._d, grad._h, s_decay, s_step)
    if flush.numel() >= compile_min and not _compiled["failed"]:
        # a broadcast view of θ0 (a stream's first segment) or any other view is never written into
        fn = _fused_step_into if grad.overwrite and theta.is_contiguous() else _fused_step
        if fn.__name__ not in _compiled:
            _compiled[fn.__name__] = torch.compile(fn)
        try:
            return _compiled[fn.__name__](*args)
        except torch.OutOfMemoryError:
            raise  # not the compiler's failure: the blocks would need more memory still
        except Exception as err:  # e.g. no C++ compiler: the blocks compute the same
            _compiled["failed"] = True
            log.warning("the compiled table update is unavailable (%s: %s); updating block by block",
                        type(err).__name__, str(err).splitlines()[0] if str(err) else "")
    return _blocked_step(*args, block_rows=block_rows)


def krause_table_step(theta: Tensor, flush: Tensor, anchored: Tensor, gain: Tensor, grad: TableGradient,
                      s_decay: Optional[Tensor] = None, s_step: Optional[Tensor] = None,
                      block_rows: int = BLOCK_ROWS, compile_min: Optional[int] = None) -> Tensor:
    """θ + s_decay · (anchored − flush ⊙ θ) − s_step · gain ⊙ G for a per-stream table `θ [B, V, E]` (a
    broadcast view is fine), the rule's per-coordinate constants `[V, E]` (anchored = flush ⊙ θ0) and per-stream
    scales `s_* [B]` (None: 1, Krause's step), into a new tensor or, where `grad.overwrite`, possibly into θ; G
    stays factored (see the module's docstring).
    The decoder's part is taken by the compiled kernel for tables of at least `compile_min` elements (default
    `COMPILE_MIN_ELEMENTS`), else in blocks of `block_rows` rows; the lookup rows' part is then subtracted on
    those rows."""
    compile_min = COMPILE_MIN_ELEMENTS if compile_min is None else compile_min
    ones = torch.ones(grad.shape[0], dtype=theta.dtype, device=theta.device)
    s_decay = (ones if s_decay is None else s_decay).view(-1, 1, 1)
    s_step = (ones if s_step is None else s_step).view(-1, 1, 1)
    out = _decoder_step(theta, flush, anchored, gain, grad, s_decay, s_step, block_rows, compile_min)
    streams, rows = grad.lookup_index()
    step = gain[rows] * grad.d_embedded.reshape(-1, out.shape[-1]) * s_step.view(-1)[streams].unsqueeze(-1)
    return out.index_put_((streams, rows), step.neg_(), accumulate=True)


__all__ = ["BLOCK_ROWS", "COMPILE_MIN_ELEMENTS", "TableGradient", "krause_table_step"]
