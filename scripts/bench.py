#!/usr/bin/env python
"""Performance figures of dynlm, each a ratio measured side by side in one process.

    python scripts/bench.py                      # every figure, full sizes (a few minutes on 2 cores)
    python scripts/bench.py --only lstm_fwd_bwd,memory
    python scripts/bench.py --quick              # tiny sizes, a few seconds (CI smoke test)

One JSON line per figure on stdout. Timed callables are run in interleaved order (the order rotates every
repetition) after a warm-up, and every figure is the median over repetitions of the ratio of the two times
taken next to each other, so a machine shared with other work moves both sides alike. Absolute medians
are printed for context. Figures:

- `lstm_fwd_bwd`  per-stream-weight LSTM layer fwd+bwd (grads w.r.t. weights, input, state) / `nn.LSTM`
                  with shared weights, same shapes (B=8, H=512, I=512, T=70).
- `lm_train`      stage-1 tokens/s of the AWD-LSTM train step (model=small, its dropouts, AR/TAR, clip, SGD)
                  / a plain `nn.LSTM` LM of the same sizes, tied embeddings, no regularisation.
- `meta_train`    stage-2 time per token (a window of K segments through `adapt_segment(keep_graph=True)`,
                  backward, clip, Adam) / stage-1 time per token on the same model and the same tokens.
- `adaptive_eval` time per token of `meta` and `dyneval` adaptive evaluation / `static` evaluation.
- `memory`        peak memory of one meta-training window for K = 4, 8, 16, 32, with and without
                  checkpointed segments. On CPU: peak resident memory growth of this process (the kernel's
                  high-water mark, reset before each window via /proc/self/clear_refs, with glibc's mmap
                  threshold pinned so that freed tensors go back to the OS); on CUDA:
                  `torch.cuda.max_memory_allocated`.
"""
from __future__ import annotations

import argparse
import ctypes
import gc
import json
import math
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dynlm.dynamic.adapt import adapt_segment  # noqa: E402
from dynlm.dynamic.fast_weights import select_dynamic, static_weights  # noqa: E402
from dynlm.dynamic.grad_stats import GradStats  # noqa: E402
from dynlm.dynamic.reading_state import fresh_state  # noqa: E402
from dynlm.dynamic.rules import DynEvalRule, GatedMetaLearner  # noqa: E402
from dynlm.eval.adaptive import adaptive_token_nll  # noqa: E402
from dynlm.eval.static import static_token_nll  # noqa: E402
from dynlm.model import (  # noqa: E402
    AWDLSTM, activation_regularization, detach_state, lstm_layer, lstm_layer_loop, token_nll,
)

FIGURES = ("lstm_fwd_bwd", "lm_train", "meta_train", "adaptive_eval", "memory")
TARGETS = {
    "lstm_fwd_bwd": ("<=", 4.0),
    "lm_train": (">=", 0.9),
    "meta_train": ("<=", 3.0),
    "adaptive_eval": ("<=", 4.0),
    "memory": ("<=", 1.5),
}


@dataclass
class Sizes:
    # lstm_fwd_bwd
    lstm_b: int = 8
    lstm_h: int = 512
    lstm_i: int = 512
    lstm_t: int = 70
    # the model=small LM (lm_train, meta_train, adaptive_eval, memory)
    vocab: int = 33278
    emb: int = 200
    hidden: int = 400
    layers: int = 2
    lm_batch: int = 20
    bptt: int = 70
    # stage 2 (MetaConfig defaults)
    meta_b: int = 4
    seg_len: int = 5
    window: int = 4
    eval_tokens: int = 250
    memory_windows: tuple = (4, 8, 16, 32)
    reps: int = 7
    warmup: int = 1


QUICK = Sizes(
    lstm_b=2, lstm_h=32, lstm_i=24, lstm_t=8, vocab=300, emb=16, hidden=24, lm_batch=4, bptt=10,
    meta_b=2, seg_len=3, window=2, eval_tokens=30, memory_windows=(2, 4), reps=3, warmup=1,
)

# model=small's regularisation (conf/model/small.yaml)
SMALL_REG = dict(dropout=0.3, dropouth=0.15, dropouti=0.3, dropoute=0.05, wdrop=0.3)
SMALL_AR = (2.0, 1.0)
NO_REG = dict(dropout=0.0, dropouth=0.0, dropouti=0.0, dropoute=0.0, wdrop=0.0)


# ----------------------------------------------------------------------------------------------- timing
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved(fns: Dict[str, Callable[[], object]], reps: int, warmup: int, device) -> Dict[str, List[float]]:
    """Seconds per call of each function, `reps` times each, the call order rotating every repetition."""
    names = list(fns)
    for _ in range(warmup):
        for k in names:
            fns[k]()
    times: Dict[str, List[float]] = {k: [] for k in names}
    for r in range(reps):
        order = names[r % len(names):] + names[: r % len(names)]
        for k in order:
            _sync(device)
            t0 = time.perf_counter()
            fns[k]()
            _sync(device)
            times[k].append(time.perf_counter() - t0)
    return times


def med(xs: List[float]) -> float:
    return statistics.median(xs)


def paired_ratio(times: Dict[str, List[float]], a: str, b: str, scale: float = 1.0) -> float:
    """Median over repetitions of (time of a) / (time of b) * scale, each pair measured back to back."""
    return statistics.median(scale * x / y for x, y in zip(times[a], times[b]))


def env_info(device: torch.device) -> dict:
    info = {"torch": torch.__version__, "device": str(device), "threads": torch.get_num_threads(),
            "cpus": os.cpu_count(), "machine": platform.processor() or platform.machine(),
            "loadavg_1m": round(os.getloadavg()[0], 2)}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def emit(name: str, ratio: float, cfg: Sizes, quick: bool, device, **numbers) -> dict:
    op, target = TARGETS[name]
    met = (ratio <= target if op == "<=" else ratio >= target) and math.isfinite(ratio) and ratio > 0
    rec = {"figure": name, "ratio": round(ratio, 4), "target": f"{op} {target}", "met": bool(met),
           "mode": "quick" if quick else "full", "reps": cfg.reps}
    rec.update({k: (round(v, 4) if isinstance(v, float) else v) for k, v in numbers.items()})
    rec["env"] = env_info(device)
    print(json.dumps(rec), flush=True)
    return rec


# ----------------------------------------------------------------------------------------------- builders
def small_model(s: Sizes, device, reg: dict, seed: int = 0) -> AWDLSTM:
    torch.manual_seed(seed)
    return AWDLSTM(s.vocab, s.emb, s.hidden, s.layers, **reg).to(device)


class PlainLM(nn.Module):
    """The reference: `nn.LSTM` layers (emb -> hidden ... -> emb), tied embeddings, no regularisation."""

    def __init__(self, vocab: int, emb: int, hidden: int, layers: int):
        super().__init__()
        self.embedding = nn.Embedding(vocab, emb)
        sizes = [emb] + [hidden] * (layers - 1) + [emb]
        self.rnns = nn.ModuleList(nn.LSTM(sizes[l], sizes[l + 1]) for l in range(layers))
        self.bias = nn.Parameter(torch.zeros(vocab))

    def forward(self, x, state):
        h = self.embedding(x)
        new = []
        for rnn, s in zip(self.rnns, state):
            h, s = rnn(h, s)
            new.append(s)
        return F.linear(h, self.embedding.weight, self.bias), new

    def init_state(self, b, device):
        return [(torch.zeros(1, b, r.hidden_size, device=device), torch.zeros(1, b, r.hidden_size, device=device))
                for r in self.rnns]


def random_stats(model: nn.Module, names, seed: int = 1) -> GradStats:
    """Stand-in for measured mean squared gradients (their values only steer the gates' features)."""
    g = torch.Generator().manual_seed(seed)
    params = dict(model.named_parameters())
    v = {n: ((torch.rand(params[n].shape, generator=g) + 0.05) * 1e-3).to(params[n].device) for n in names}
    return GradStats(v, tokens=1000)


def token_stream(n: int, b: int, vocab: int, device, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (n, b), generator=g).to(device)


class MetaWindow:
    """One stage-2 window as `meta_trainer.train_meta` runs it: K x adapt_segment(keep_graph), backward,
    clip, Adam on φ, detach at the window boundary. Keeps reading the same stream window after window."""

    def __init__(self, model, s: Sizes, device, window: int, use_checkpoint: bool = True, second_order=False):
        self.model, self.s, self.window = model, s, window
        self.second_order, self.use_checkpoint = second_order, use_checkpoint
        self.names = select_dynamic(model, ["layers.*"])
        stats = random_stats(model, self.names)
        self.learner = GatedMetaLearner(self.names, stats, use_checkpoint=use_checkpoint).to(device)
        for p in model.parameters():
            p.requires_grad_(False)
        self.opt = torch.optim.Adam(self.learner.parameters(), 1e-3)
        self.theta0 = static_weights(model, self.names)
        self.state = fresh_state(model, self.theta0, s.meta_b, self.learner.init_learner_state(self.theta0))
        self.stream = token_stream(window * s.seg_len + 1, s.meta_b, s.vocab, device, seed=3)

    def __call__(self):
        L = self.s.seg_len
        losses = []
        state = self.state
        for k in range(self.window):
            x, y = self.stream[k * L:(k + 1) * L], self.stream[k * L + 1:(k + 1) * L + 1]
            seg_loss, _, state, _ = adapt_segment(
                self.model, self.learner, state, self.theta0, x, y, keep_graph=True,
                second_order=self.second_order, use_checkpoint=self.use_checkpoint,
            )
            losses.append(seg_loss)
        meta_loss = torch.stack(losses).mean()
        self.opt.zero_grad(set_to_none=True)
        meta_loss.backward()
        torch.nn.utils.clip_grad_norm_(self.learner.parameters(), 1.0)
        self.opt.step()
        self.state = state.detach()
        return float(meta_loss.detach())


class LMStep:
    """One stage-1 step as `lm_trainer.train_lm` runs it (forward, NLL + AR/TAR, backward, clip, SGD)."""

    def __init__(self, model: AWDLSTM, x, y, ar=SMALL_AR, lr: float = 1.0):
        self.model, self.x, self.y, self.ar = model, x, y, ar
        model.train()
        for p in model.parameters():
            p.requires_grad_(True)
        self.opt = torch.optim.SGD(model.parameters(), lr=lr, weight_decay=1.2e-6)
        self.hidden = model.init_state(x.shape[1])

    def __call__(self):
        out = self.model(self.x, detach_state(self.hidden))
        self.hidden = out.state
        nll = token_nll(out.logits, self.y).mean()
        loss = nll + activation_regularization(out.last_dropped, out.last_raw, *self.ar)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 0.25)
        self.opt.step()


class PlainStep:
    def __init__(self, model: PlainLM, x, y, lr: float = 1.0):
        self.model, self.x, self.y = model, x, y
        self.opt = torch.optim.SGD(model.parameters(), lr=lr, weight_decay=1.2e-6)
        self.hidden = model.init_state(x.shape[1], x.device)

    def __call__(self):
        logits, hidden = self.model(self.x, [(h.detach(), c.detach()) for h, c in self.hidden])
        self.hidden = hidden
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), self.y.reshape(-1))
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 0.25)
        self.opt.step()


# ----------------------------------------------------------------------------------------------- figures
def fig_lstm_fwd_bwd(s: Sizes, device, quick: bool) -> dict:
    B, H, I, T = s.lstm_b, s.lstm_h, s.lstm_i, s.lstm_t
    torch.manual_seed(0)
    ref = nn.LSTM(I, H).to(device)
    x = torch.randn(T, B, I, device=device, requires_grad=True)
    h0 = torch.randn(B, H, device=device, requires_grad=True)
    c0 = torch.randn(B, H, device=device, requires_grad=True)
    shared = (ref.weight_ih_l0, ref.weight_hh_l0, ref.bias_ih_l0, ref.bias_hh_l0)
    per = [(w.detach().unsqueeze(0) + 0.01 * torch.randn(B, *w.shape, device=device)).requires_grad_()
           for w in shared]
    g_out = torch.randn(T, B, H, device=device)
    g_h, g_c = torch.randn(B, H, device=device), torch.randn(B, H, device=device)

    def clear():
        for t in [x, h0, c0, *per, *ref.parameters()]:
            t.grad = None

    def run_ref():
        clear()
        out, (h, c) = ref(x, (h0.unsqueeze(0), c0.unsqueeze(0)))
        torch.autograd.backward([out, h[0], c[0]], [g_out, g_h, g_c])

    def run_impl(fn):
        def go():
            clear()
            out, (h, c) = fn(x, (h0, c0), *per)
            torch.autograd.backward([out, h, c], [g_out, g_h, g_c])
        return go

    def fwd_nograd():
        with torch.no_grad():
            lstm_layer(x, (h0, c0), *per)

    fns = {"per_stream": run_impl(lstm_layer), "nn_lstm": run_ref, "per_stream_fwd_nograd": fwd_nograd}
    fns["autograd_loop"] = run_impl(lstm_layer_loop)
    reps = s.reps if quick else max(3, s.reps - 2)
    times = interleaved(fns, reps, s.warmup, device)
    per_bytes = B * 4 * H * H * per[1].element_size()
    return emit(
        "lstm_fwd_bwd", paired_ratio(times, "per_stream", "nn_lstm"), s, quick, device,
        per_stream_ms=1e3 * med(times["per_stream"]), nn_lstm_ms=1e3 * med(times["nn_lstm"]),
        per_stream_fwd_nograd_ms=1e3 * med(times["per_stream_fwd_nograd"]),
        autograd_loop_ms=1e3 * med(times["autograd_loop"]),
        autograd_loop_ratio=paired_ratio(times, "autograd_loop", "nn_lstm"),
        w_hh_mb=per_bytes / 2**20, sizes=dict(B=B, H=H, I=I, T=T),
    )


def fig_lm_train(s: Sizes, device, quick: bool) -> dict:
    T, B = s.bptt, s.lm_batch
    data = token_stream(T + 1, B, s.vocab, device)
    x, y = data[:-1], data[1:]
    ours = LMStep(small_model(s, device, SMALL_REG), x, y)
    noreg = LMStep(small_model(s, device, NO_REG), x, y, ar=(0.0, 0.0))
    torch.manual_seed(0)
    plain = PlainStep(PlainLM(s.vocab, s.emb, s.hidden, s.layers).to(device), x, y)
    times = interleaved({"awd": ours, "plain": plain, "awd_noreg": noreg}, s.reps, s.warmup, device)
    n = x.numel()
    return emit(
        "lm_train", paired_ratio(times, "plain", "awd"), s, quick, device,
        awd_tok_s=n / med(times["awd"]), plain_tok_s=n / med(times["plain"]),
        awd_noreg_tok_s=n / med(times["awd_noreg"]), ratio_noreg=paired_ratio(times, "plain", "awd_noreg"),
        compared="AWDLSTM train step with model=small regularisation (dropout .3/.15/.3, dropoute .05, "
                 "wdrop .3, AR 2, TAR 1) vs nn.LSTM LM without any; ratio_noreg: AWDLSTM with all off",
        sizes=dict(V=s.vocab, emb=s.emb, hidden=s.hidden, layers=s.layers, B=B, T=T),
    )


def fig_meta_train(s: Sizes, device, quick: bool) -> dict:
    model = small_model(s, device, SMALL_REG)
    model.train()
    meta = MetaWindow(model, s, device, s.window, use_checkpoint=True)
    # stage 1 on the same model and the same tokens: the window's K*L tokens of the B streams as one sequence
    model1 = small_model(s, device, SMALL_REG)
    stage1 = LMStep(model1, meta.stream[:-1], meta.stream[1:])
    times = interleaved({"meta": meta, "stage1": stage1}, s.reps, s.warmup, device)
    n = s.window * s.seg_len * s.meta_b
    coords = sum(t.numel() for t in meta.theta0.values()) * s.meta_b
    return emit(
        "meta_train", paired_ratio(times, "meta", "stage1"), s, quick, device,
        meta_ms_per_token=1e3 * med(times["meta"]) / n, stage1_ms_per_token=1e3 * med(times["stage1"]) / n,
        meta_window_ms=1e3 * med(times["meta"]), dynamic_coordinates=coords,
        coordinates_per_token=coords / (s.seg_len * s.meta_b),
        sizes=dict(V=s.vocab, emb=s.emb, hidden=s.hidden, layers=s.layers, B=s.meta_b, L=s.seg_len, K=s.window),
    )


def fig_adaptive_eval(s: Sizes, device, quick: bool) -> dict:
    model = small_model(s, device, SMALL_REG).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    names = select_dynamic(model, ["layers.*"])
    stats = random_stats(model, names)
    meta = GatedMetaLearner(names, stats).to(device)
    dyneval = DynEvalRule(names, stats, lr=meta.lr, lam=meta.lam, eps=meta.eps, update=meta.update_init).to(device)
    ids = token_stream(s.eval_tokens, 1, s.vocab, "cpu", seed=5)[:, 0]
    fns = {
        "static": lambda: static_token_nll(model, ids, 0, chunk=256),
        "meta": lambda: adaptive_token_nll(model, meta, names, ids, 0, s.seg_len),
        "dyneval": lambda: adaptive_token_nll(model, dyneval, names, ids, 0, s.seg_len),
    }
    times = interleaved(fns, s.reps if quick else max(3, s.reps - 2), s.warmup, device)
    n = ids.numel()
    r_meta = paired_ratio(times, "meta", "static")
    return emit(
        "adaptive_eval", r_meta, s, quick, device,
        ratio_dyneval=paired_ratio(times, "dyneval", "static"),
        static_ms_per_token=1e3 * med(times["static"]) / n, meta_ms_per_token=1e3 * med(times["meta"]) / n,
        dyneval_ms_per_token=1e3 * med(times["dyneval"]) / n,
        sizes=dict(V=s.vocab, emb=s.emb, hidden=s.hidden, layers=s.layers, tokens=n, L=s.seg_len, B=1),
    )


# ----------------------------------------------------------------------------------------------- memory
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


def _libc():
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


def _pin_malloc() -> bool:
    """Large blocks straight from mmap and back to the OS on free: resident memory tracks live tensors."""
    libc = _libc()
    if libc is None:
        return False
    ok = libc.mallopt(_M_MMAP_THRESHOLD, 64 * 1024)
    return bool(ok) and bool(libc.mallopt(_M_TRIM_THRESHOLD, 128 * 1024))


def _trim_malloc() -> None:
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)  # give free heap memory back, so that the starting level is what is live


def _proc_kib(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


class PeakMemory:
    """Peak bytes above the starting level over a block of code."""

    def __init__(self, device):
        self.device = device
        if device.type == "cuda":
            self.method = "torch.cuda.max_memory_allocated"
        else:
            pinned = _pin_malloc()
            self.method = "peak RSS growth (/proc VmHWM after clear_refs)"
            self.method += ", mmap threshold 64 KiB" if pinned else ""

    def __enter__(self):
        gc.collect()
        _trim_malloc()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.start = torch.cuda.memory_allocated(self.device)
        else:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # reset the high-water mark to the current resident size
            self.start = _proc_kib("VmRSS") * 1024
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak = torch.cuda.max_memory_allocated(self.device) - self.start
        else:
            self.peak = _proc_kib("VmHWM") * 1024 - self.start
        return False


def _available_bytes() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 1 << 62


def fig_memory(s: Sizes, device, quick: bool) -> dict:
    """Peaks in MB for each K, in increasing K. A configuration whose peak, extrapolated linearly in K from
    the two previous ones, would take more than 40% of the available memory is not run (the machine is
    shared): its value is the extrapolation, listed under `extrapolated`."""
    if device.type == "cpu":
        _pin_malloc()  # before anything is allocated for the measurements (the warm-up included)
    model = small_model(s, device, SMALL_REG)
    model.train()
    peaks: Dict[str, float] = {}
    extrapolated: List[str] = []
    method = ""
    for ckpt in (True, False):  # first-call allocations (thread pools, lazy caches) outside the measurements
        MetaWindow(model, s, device, 1, use_checkpoint=ckpt)()
    for ckpt in (True, False):
        done: List[tuple] = []
        for k in s.memory_windows:
            key = f"K{k}_{'ckpt' if ckpt else 'plain'}_mb"
            if len(done) >= 2 and device.type == "cpu":
                (k1, p1), (k2, p2) = done[-2:]
                guess = p2 + (p2 - p1) / (k2 - k1) * (k - k2)
                if guess * 2**20 > 0.4 * _available_bytes():
                    peaks[key] = guess
                    extrapolated.append(key)
                    done.append((k, guess))
                    continue
            win = MetaWindow(model, s, device, k, use_checkpoint=ckpt)
            gc.collect()
            with PeakMemory(device) as pm:
                win()
            method = pm.method
            peaks[key] = pm.peak / 2**20
            done.append((k, peaks[key]))
            del win
            gc.collect()
    k_lo, k_hi = s.memory_windows[0], s.memory_windows[-1]
    ratio = peaks[f"K{k_hi}_ckpt_mb"] / peaks[f"K{k_lo}_ckpt_mb"]
    ckpt_vs_plain = peaks[f"K{k_hi}_ckpt_mb"] / peaks[f"K{k_hi}_plain_mb"]
    names = select_dynamic(model, ["layers.*"])
    theta_bytes = s.meta_b * sum(t.numel() * t.element_size() for t in static_weights(model, names).values())
    return emit(
        "memory", ratio, s, quick, device, ckpt_vs_plain=ckpt_vs_plain, ckpt_vs_plain_target="<= 0.5",
        ckpt_vs_plain_met=bool(ckpt_vs_plain <= 0.5), ratio_name=f"ckpt K{k_hi} / ckpt K{k_lo}",
        method=method, **peaks, extrapolated=extrapolated, per_stream_theta_mb=theta_bytes / 2**20,
        sizes=dict(V=s.vocab, emb=s.emb, hidden=s.hidden, layers=s.layers, B=s.meta_b, L=s.seg_len,
                   K=list(s.memory_windows)),
    )


RUNNERS = {
    "lstm_fwd_bwd": fig_lstm_fwd_bwd, "lm_train": fig_lm_train, "meta_train": fig_meta_train,
    "adaptive_eval": fig_adaptive_eval, "memory": fig_memory,
}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default=",".join(FIGURES), help=f"comma-separated subset of {','.join(FIGURES)}")
    ap.add_argument("--quick", action="store_true", help="tiny sizes, a few seconds (smoke test)")
    ap.add_argument("--reps", type=int, default=None, help="timed repetitions per callable")
    ap.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch intra-op threads (default: torch's own; 1 with --quick, where sizes are tiny)")
    args = ap.parse_args(argv)
    only = [f.strip() for f in args.only.split(",") if f.strip()]
    unknown = [f for f in only if f not in RUNNERS]
    if unknown:
        ap.error(f"unknown figure(s) {unknown}; choose from {list(FIGURES)}")
    s = QUICK if args.quick else Sizes()
    if args.reps:
        s.reps = args.reps
    device = torch.device(args.device)
    threads = args.threads or (1 if args.quick else None)
    if threads:
        torch.set_num_threads(threads)
    # memory last: it pins glibc's mmap threshold, which slows allocation for whatever runs after it
    for name in sorted(only, key=FIGURES.index):
        RUNNERS[name](s, device, args.quick)
        gc.collect()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
