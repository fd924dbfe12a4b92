#!/usr/bin/env python
"""Performance figures of dynlm, each a ratio measured side by side in one process.

    python scripts/bench.py                      # every figure, full sizes (a few minutes on 2 cores)
    python scripts/bench.py --only lstm_fwd_bwd,memory
    python scripts/bench.py --quick              # tiny sizes, a few seconds (CI smoke test)

One JSON line per figure on stdout. Timed callables are run in interleaved order (the order rotates every
repetition) after a warm-up, and every figure is the median over repetitions of the ratio of the two times
taken next to each other, so a machine shared with other work moves both sides alike. Absolute medians
are printed for context.

Each figure times the library's own exported unit of work, on a config composed from `conf/` with Hydra's
compose API exactly as `scripts/train.py` composes it (`model=small`; `--quick`: `model=tiny`). The sizes
that are choices of the benchmark (stage 1's B and bptt, stage 2's B, L, K, the K of the memory figure,
checkpointing, no regularisation) are overrides of that config, and everything else (dropouts, AR/TAR,
optimiser, clip, `meta.dynamic`, the learner) is conf's. The data is a synthetic corpus in the WikiText layout
(` = Title = ` lines, blank lines, text lines of random words; a 33,278-word vocabulary, ~300 with --quick),
turned into real `Split` / `MetaStreams` objects by `dynlm.data`, and the gradient statistics the update
rules read are measured on it through `grad_stats_for`, the path stage 2 and evaluation take. Figures:

- `lstm_fwd_bwd`  `dynlm.model.lstm_layer` (per-stream weights) fwd+bwd (grads w.r.t. weights, input, state)
                  / `nn.LSTM` with shared weights, same shapes (B=8, H=512, I=512, T=70); also
                  `maths.lstm.lstm_layer_reference` (the plain autograd recurrence).
- `lm_train`      stage-1 tokens/s of `dynlm.train.lm_trainer.lm_step` (conf's model=small with its
                  dropouts and AR/TAR, `build_optimizer(cfg.optim)`, clip; B=20, bptt=70) / a plain `nn.LSTM`
                  LM of the same sizes, tied embeddings, no regularisation; `ratio_noreg`: `lm_step` with
                  every dropout and AR/TAR overridden to 0.
- `meta_train`    stage-2 time per token of `dynlm.train.meta_window.meta_window` (B=4, L=5, K=4,
                  checkpointed, first order, `meta.dynamic=[layers.*]`; each call reads the next window of
                  `MetaStreams`, as stage 2 does) / `lm_step` time per token on the same model config and the
                  same tokens (the window's K·L tokens of the B streams as one [K·L, B] batch);
                  `es_vs_stage1`: the same with `meta.estimator=es` (K=32: 2P + 1 reads of the window without
                  a graph) per token / `lm_step` per token.
- `joint_train`   joint training (issue #25: θ0 trained with the rule in the loop): time per token of `meta_window`
                  with `meta.train_static=true`, `meta.dynamic=[*]` (every parameter adapting), B=4, L=5, K=4 /
                  `lm_step` per token on the same tokens (as `meta_train`): `meta.estimator=first_order` with
                  `rule=dyneval` (ratio, target <= 3), meta-BPTT with `rule=cheap`, checkpointed, first order
                  (`bptt_first_ratio`) and second order (`second_order_ratio`, target <= 8);
                  `memory_ratio_<arm>`: peak memory of one such window at K = 32 / K = 4 (`joint_memory_windows`,
                  measured as the `memory` figure does, after one window read, so that Adam's first allocation of
                  its moments for θ0 is not counted; target <= 1.5).
- `adaptive_eval` time per token of `dynlm.dynamic.reading.read_stream` with the `meta` rule and the
                  `dyneval` rule (`build_rule(rule_config(name, like=cfg.rule), ...)`, L = meta.seg_len, batch 1)
                  / static `read_stream` (`data.eval_bptt` tokens per forward pass), on the synthetic valid tokens;
                  `cheap_vs_dyneval`: the cheap learned rule (`rule=cheap`) per token / dyneval per token,
                  same L and adapted set (target <= 1.3, `cheap_vs_dyneval_met`), LSTM weights
                  (`meta.dynamic`'s default); `cheap_vs_dyneval_all`: the same with every parameter adapting.
- `grad_stats`    time of Krause's gradient statistics (`grad_stats_for`: every parameter, batches of
                  meta.gradstat_streams = 100 streams × L tokens) / static `read_stream` of the same tokens.
- `dyneval`       the standard protocol (batch 1): dyneval per token / static, adapting every parameter
                  (ratio) and the LSTM weights only (`ratio_lstm_only`), each beside the bound that the machine's
                  copy bandwidth sets (`DYNEVAL_PASSES` passes over the dynamic weights per segment and
                  `STATIC_PASSES` over the static ones); and
                  `multi_stream_speedup`: tokens/s of `eval.streams`-style reading (8 article-aligned streams
                  side by side) / the standard protocol, on the same tokens, every parameter adapting
                  (`multi_stream_speedup_lstm`: the LSTM weights only, where the streams share the decoder).
- `memory`        peak memory of one `meta_window` for K = 4, 8, 16, 32 (`meta.window=K`), with and without
                  checkpointed segments (`meta.checkpoint_segments`). On CPU: peak resident memory growth of
                  this process (the kernel's high-water mark, reset before each window via
                  /proc/self/clear_refs, with glibc's mmap threshold pinned so that freed tensors go back to
                  the OS); on CUDA: `torch.cuda.max_memory_allocated`. `es_ratio`: the same peak with
                  `meta.estimator=es`, K=32 / K=4 (target <= 1.5).
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import functools
import gc
import json
import math
import os
import platform
import random
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Sequence, Tuple

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import nn

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from hydra import compose, initialize_config_dir  # noqa: E402

from dynlm.config import register_configs  # noqa: E402
from dynlm.data import MetaStreams, Split, WordVocab, batchify, build_split, get_batch  # noqa: E402
from dynlm.dynamic.fast_weights import select_dynamic  # noqa: E402
from dynlm.dynamic.reading import read_stream, stream_starts  # noqa: E402
from dynlm.dynamic.rules import build_rule, rule_config  # noqa: E402
from dynlm.maths.lstm import lstm_layer_reference  # noqa: E402
from dynlm.model import AWDLSTM, build_model, lstm_layer, static_weights  # noqa: E402
from dynlm.run.allocator import keep_freed_memory, return_freed_memory, trim_freed_memory  # noqa: E402
from dynlm.run.from_checkpoint import grad_stats_for  # noqa: E402
from dynlm.train.lm_trainer import build_optimizer, lm_step  # noqa: E402
from dynlm.train.meta_learning import MetaLearning  # noqa: E402
from dynlm.train.meta_trainer import build_meta_learning, fresh_window_state, next_window  # noqa: E402

FIGURES = ("lstm_fwd_bwd", "lm_train", "meta_train", "joint_train", "adaptive_eval", "grad_stats", "dyneval", "memory")
TARGETS = {
    "lstm_fwd_bwd": ("<=", 4.0),
    "lm_train": (">=", 0.9),
    "meta_train": ("<=", 3.0),
    "joint_train": ("<=", 3.0),  # first order; second order and memory: the two constants below
    "adaptive_eval": ("<=", 4.0),
    "grad_stats": ("<=", 4.0),
    "dyneval": ("<=", 4.0),
    "memory": ("<=", 1.5),
}
JOINT_SECOND_ORDER_TARGET = 8.0  # joint_train's second order per token / stage 1 per token (issue #25)
JOINT_MEMORY_TARGET = 1.5  # joint_train's peak memory of a window, largest K / smallest K
CHEAP_TARGET = 1.3  # adaptive_eval's `cheap_vs_dyneval`: rule=cheap per token / dyneval per token


@dataclass(frozen=True)
class Sizes:
    """The benchmark's own choices. Model sizes, regularisation and everything else come from conf/."""

    # lstm_fwd_bwd (a kernel micro-benchmark, outside the configs)
    lstm_b: int = 8
    lstm_h: int = 512
    lstm_i: int = 512
    lstm_t: int = 70
    # the config: conf/model/<model>.yaml, and the overrides below
    model: str = "small"
    lm_batch: int = 20  # data.batch_size
    bptt: int = 70  # data.bptt
    meta_b: int = 4  # meta.batch_size
    seg_len: int = 5  # meta.seg_len
    window: int = 4  # meta.window
    es_window: int = 32  # meta.window of the ES estimator's rows (meta_train, memory)
    memory_windows: Tuple[int, ...] = (4, 8, 16, 32)  # meta.window of the memory figure
    joint_memory_windows: Tuple[int, ...] = (4, 8, 32)  # joint_train's memory (K=32 extrapolated if too big)
    # the synthetic corpus
    vocab: int = 33278  # WikiText-2's
    train_articles: int = 8
    article_tokens: int = 6000  # about; the train split holds every word of the vocabulary at least once
    valid_articles: int = 8
    eval_tokens: int = 250  # adaptive_eval reads the first ones of valid
    stream_tokens: int = 800  # dyneval reads this many valid tokens as 1 and as `streams` streams
    streams: int = 8  # eval.streams of the multi-stream figure
    gradstat_figure_tokens: int = 20000  # train tokens of the statistics figure
    gradstat_batches: int = 2  # batches of meta.gradstat_streams × L tokens for the statistics the rules read
    reps: int = 7
    warmup: int = 1


QUICK = Sizes(
    lstm_b=2, lstm_h=32, lstm_i=24, lstm_t=8, model="tiny", lm_batch=4, bptt=10, meta_b=2, seg_len=3, window=2,
    es_window=4, memory_windows=(2, 4), joint_memory_windows=(2, 4),
    vocab=300, train_articles=6, article_tokens=200, valid_articles=2,
    eval_tokens=30, stream_tokens=60, streams=2, gradstat_figure_tokens=1000,
    reps=3, warmup=1,
)

# The "no regularisation" variant of the model config (lm_train's ratio_noreg).
NO_REG = {"model.dropout": 0, "model.dropouth": 0, "model.dropouti": 0, "model.dropoute": 0, "model.wdrop": 0,
          "model.alpha": 0, "model.beta": 0}


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


def emit(name: str, ratio: float, s: Sizes, quick: bool, device, **numbers) -> dict:
    op, target = TARGETS[name]
    met = (ratio <= target if op == "<=" else ratio >= target) and math.isfinite(ratio) and ratio > 0
    rec = {"figure": name, "ratio": round(ratio, 4), "target": f"{op} {target}", "met": bool(met),
           "mode": "quick" if quick else "full", "reps": s.reps}
    rec.update({k: (round(v, 4) if isinstance(v, float) else v) for k, v in numbers.items()})
    rec["env"] = env_info(device)
    print(json.dumps(rec), flush=True)
    return rec


# ----------------------------------------------------------------------------------------------- config, data
@functools.cache
def _compose(overrides: Tuple[str, ...]) -> DictConfig:
    register_configs()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


def bench_config(s: Sizes, **extra) -> DictConfig:
    """conf/config.yaml with `model=<s.model>` and the benchmark's sizes as overrides (`extra`: more of them,
    e.g. `**{"meta.window": 8}`). Composed once per set of overrides; a fresh copy each call."""
    # optim.lr=1: the stage-1 figure trains on one batch again and again; conf's lr 30 can make that diverge
    o = {"model": s.model, "optim.lr": 1.0, "data.batch_size": s.lm_batch, "data.bptt": s.bptt,
         "meta.batch_size": s.meta_b, "meta.seg_len": s.seg_len, "meta.window": s.window}
    o.update(extra)
    text = {k: (str(v).lower() if isinstance(v, bool) else v) for k, v in o.items()}
    return copy.deepcopy(_compose(tuple(f"{k}={v}" for k, v in text.items())))


@dataclass
class SyntheticData:
    vocab: WordVocab
    train: Split
    valid: Split


def wikitext_lines(rng: random.Random, words: List[str], num_articles: int, tokens: int,
                   order: Sequence[str] = ()) -> List[str]:
    """WikiText layout: a leading blank line, then per article ` = Title = `, a blank line, and text lines of
    `words` each followed by a blank line. The text is `order` followed by random words, `tokens` words per
    article on average (more when `order` needs it)."""
    total = max(num_articles * tokens, len(order) + num_articles)
    text = list(order) + rng.choices(words, k=total - len(order))
    per_article = -(-len(text) // num_articles)
    lines = [" "]
    for a in range(num_articles):
        body = text[a * per_article:(a + 1) * per_article]
        lines += [f" = {words[a % len(words)]} = ", " "]
        i = 0
        while i < len(body):
            n = rng.randint(10, 100)
            lines += [" " + " ".join(body[i:i + n]) + " ", " "]
            i += n
    return lines


@functools.cache
def synthetic_data(s: Sizes) -> SyntheticData:
    """A train and a valid split in the WikiText layout over a vocabulary of exactly `s.vocab` tokens (the
    random words, `=` of the title lines, `<eos>`), through the library's own vocabulary and split builders."""
    rng = random.Random(0)
    words = [f"w{i}" for i in range(s.vocab - 2)]
    order = words[:]
    rng.shuffle(order)  # every word occurs in train
    train_lines = wikitext_lines(rng, words, s.train_articles, s.article_tokens, order)
    valid_tokens = max(s.eval_tokens, s.stream_tokens)
    valid_lines = wikitext_lines(rng, words, s.valid_articles, -(-valid_tokens // s.valid_articles) + 50)
    vocab = WordVocab.build(train_lines)
    if vocab.vocab_size != s.vocab:
        raise AssertionError(f"synthetic vocabulary has {vocab.vocab_size} tokens, not {s.vocab}")
    return SyntheticData(vocab, build_split("train", train_lines, vocab), build_split("valid", valid_lines, vocab))


def stage1_model(cfg: DictConfig, data: SyntheticData, device, seed: int = 0) -> AWDLSTM:
    torch.manual_seed(seed)
    return build_model(cfg.model, data.vocab.vocab_size).to(device)


def stage2_setup(cfg: DictConfig, s: Sizes, data: SyntheticData, device, seed: int = 0):
    """A model of `cfg.model`, its dynamic parameters (`cfg.meta.dynamic`), the B meta streams of train and
    Krause's gradient statistics on `s.gradstat_batches` batches of train."""
    model = stage1_model(cfg, data, device, seed)
    names = select_dynamic(model, cfg.meta.dynamic)
    streams = MetaStreams(data.train, cfg.meta.batch_size, cfg.meta.seg_len)
    return model, names, streams, rule_stats(cfg, s, model, names, data)


def rule_stats(cfg: DictConfig, s: Sizes, model, names, data: SyntheticData):
    """The statistics the benchmarked rules read: `s.gradstat_batches` batches of train."""
    tokens = s.gradstat_batches * cfg.meta.gradstat_streams * cfg.meta.seg_len
    return measured_stats(cfg, model, names, data.train, tokens)


def measured_stats(cfg: DictConfig, model, names, split: Split, tokens: int):
    """Krause's statistics on `tokens` tokens of `split`, through the path stage 2 and evaluation take (with no
    checkpoint and no cache it is the measurement itself)."""
    with contextlib.redirect_stdout(sys.stderr):  # its messages stay off the JSON lines
        stats, _ = grad_stats_for(model, names, {}, "synthetic", split, "", tokens, cfg.meta.gradstat_streams,
                                  cfg.meta.seg_len, use_cache=False)
    return stats


def sizes_of(cfg: DictConfig, data: SyntheticData, **more) -> dict:
    m = cfg.model
    return dict(model=m.name, V=data.vocab.vocab_size, emb=m.emb_size, hidden=m.hidden_size, layers=m.num_layers,
                **more)


# ----------------------------------------------------------------------------------------------- callables
class LMSteps:
    """Stage 1's `lm_step`, call after call, carrying the hidden state; `batch()` gives each call's (x, y)."""

    def __init__(self, cfg: DictConfig, model: AWDLSTM, batch: Callable[[], Tuple[torch.Tensor, torch.Tensor]]):
        self.cfg, self.model, self.batch = cfg, model, batch
        self.optimizer = build_optimizer(cfg.optim, model)
        self.hidden = None

    def __call__(self) -> float:
        x, y = self.batch()
        if self.hidden is None:
            self.hidden = self.model.init_state(x.shape[1])
        self.model.train()
        nll, self.hidden = lm_step(self.cfg, self.model, self.model, self.optimizer, x, y, self.hidden)
        return nll


class MetaWindows:
    """Stage 2's `meta_window`, call after call: each call reads the next K segments of the streams."""

    def __init__(self, ml: MetaLearning, streams: MetaStreams, position: int = 0):
        self.ml, self.streams, self.position = ml, streams, position
        self.state, self.static_lm = fresh_window_state(ml, streams.num_local_streams)

    def __call__(self):
        self.state, self.static_lm, report = next_window(self.ml, self.streams, self.position, self.state,
                                                         self.static_lm, seed=0)
        self.position += self.ml.meta.window
        return report


def window_tokens(streams: MetaStreams, position: int, window: int, device) -> Tuple[torch.Tensor, torch.Tensor]:
    """The K segments `position .. position + K - 1` of the B streams as one [K·L, B] batch."""
    batches = [streams.batch(position + k) for k in range(window)]
    return torch.cat([b.x for b in batches]).to(device), torch.cat([b.y for b in batches]).to(device)


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


class PlainStep:
    """The reference's train step: forward, cross-entropy, backward, clip, SGD (conf's lr, weight decay, clip)."""

    def __init__(self, model: PlainLM, x, y, lr: float, weight_decay: float, clip: float):
        self.model, self.x, self.y, self.clip = model, x, y, clip
        self.opt = torch.optim.SGD(model.parameters(), lr=lr, weight_decay=weight_decay)
        self.hidden = model.init_state(x.shape[1], x.device)

    def __call__(self):
        logits, hidden = self.model(self.x, [(h.detach(), c.detach()) for h, c in self.hidden])
        self.hidden = hidden
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), self.y.reshape(-1))
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip)
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
    fns["autograd_loop"] = run_impl(lstm_layer_reference)
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
    cfg, cfg_noreg = bench_config(s), bench_config(s, **NO_REG)
    data = synthetic_data(s)
    T, B = cfg.data.bptt, cfg.data.batch_size
    x, y = get_batch(batchify(data.train.ids, B).to(device), 0, T)
    ours = LMSteps(cfg, stage1_model(cfg, data, device), lambda: (x, y))
    noreg = LMSteps(cfg_noreg, stage1_model(cfg_noreg, data, device), lambda: (x, y))
    m, o = cfg.model, cfg.optim
    torch.manual_seed(0)
    plain = PlainStep(PlainLM(data.vocab.vocab_size, m.emb_size, m.hidden_size, m.num_layers).to(device), x, y,
                      lr=o.lr, weight_decay=o.weight_decay, clip=cfg.trainer.clip)
    times = interleaved({"awd": ours, "plain": plain, "awd_noreg": noreg}, s.reps, s.warmup, device)
    n = x.numel()
    return emit(
        "lm_train", paired_ratio(times, "plain", "awd"), s, quick, device,
        awd_tok_s=n / med(times["awd"]), plain_tok_s=n / med(times["plain"]),
        awd_noreg_tok_s=n / med(times["awd_noreg"]), ratio_noreg=paired_ratio(times, "plain", "awd_noreg"),
        compared=f"lm_step with model={m.name}'s regularisation (dropout {m.dropout}/{m.dropouth}/{m.dropouti}, "
                 f"dropoute {m.dropoute}, wdrop {m.wdrop}, AR {m.alpha}, TAR {m.beta}; optim={o.name}, clip "
                 f"{cfg.trainer.clip}) vs nn.LSTM LM without any; ratio_noreg: lm_step with all of them overridden "
                 "to 0",
        sizes=sizes_of(cfg, data, B=B, T=T),
    )


def fig_meta_train(s: Sizes, device, quick: bool) -> dict:
    cfg = bench_config(s)
    data = synthetic_data(s)
    model, names, streams, stats = stage2_setup(cfg, s, data, device)
    meta = MetaWindows(build_meta_learning(cfg.meta, cfg.rule, model, names, stats), streams)
    es_cfg = bench_config(s, **{"meta.estimator": "es", "meta.window": s.es_window})
    es = MetaWindows(build_meta_learning(es_cfg.meta, es_cfg.rule, model, names, stats), streams)
    # stage 1 on the same model config and the same tokens: each call the next window's K·L tokens of the
    # B streams as one [K·L, B] batch, in step with the meta windows
    K, L, B = cfg.meta.window, cfg.meta.seg_len, streams.num_streams
    position = [0]

    def next_window():
        x, y = window_tokens(streams, position[0], K, device)
        position[0] += K
        return x, y

    stage1 = LMSteps(cfg, stage1_model(cfg, data, device), next_window)
    reports: List = []
    times = interleaved({"meta": lambda: reports.append(meta()), "stage1": stage1, "es": es}, s.reps, s.warmup,
                        device)
    n = K * L * B
    n_es = s.es_window * L * B
    coords = sum(t.numel() for t in static_weights(model, names).values()) * B
    return emit(
        "meta_train", paired_ratio(times, "meta", "stage1"), s, quick, device,
        meta_ms_per_token=1e3 * med(times["meta"]) / n, stage1_ms_per_token=1e3 * med(times["stage1"]) / n,
        meta_window_ms=1e3 * med(times["meta"]), dynamic_coordinates=coords, coordinates_per_token=coords / (L * B),
        windows_read=len(reports), skipped_windows=sum(bool(r.skipped) for r in reports),
        es_vs_stage1=paired_ratio(times, "es", "stage1", scale=n / n_es), es_ms_per_token=1e3 * med(times["es"]) / n_es,
        es_window=s.es_window, es_pairs=es_cfg.meta.es_pairs,
        compared=f"meta_window (rule={cfg.rule.name}, dynamic={list(cfg.meta.dynamic)}, checkpointed="
                 f"{cfg.meta.checkpoint_segments}, second_order={cfg.meta.second_order}) vs lm_step on its tokens",
        sizes=sizes_of(cfg, data, B=B, L=L, K=K),
    )


# The joint-training windows (issue #25): θ0 trained with the rule in the loop, every parameter adapting.
JOINT = {"rule": "cheap", "meta.train_static": True, "meta.dynamic": "[*]", "meta.checkpoint_segments": True}
# The first-order joint estimator on the reading path (θ0 only: a rule without φ)
JOINT_FIRST_ORDER = {**JOINT, "rule": "dyneval", "meta.estimator": "first_order"}
JOINT_ARMS = {"first_order": (JOINT_FIRST_ORDER, False), "bptt_first": (JOINT, False), "bptt_second": (JOINT, True)}


def fig_joint_train(s: Sizes, device, quick: bool) -> dict:
    """Joint training's window (`meta_window` with `meta.train_static=true`) per token / `lm_step` per token on the
    same tokens: `meta.estimator=first_order` (rule=dyneval, the ratio), and meta-BPTT first and second order
    (rule=cheap, φ in the same backward); then the peak memory of each one's window for each K of
    `s.joint_memory_windows` (`window_peaks`)."""
    cfg = bench_config(s, **JOINT)
    data = synthetic_data(s)
    model, names, streams, stats = stage2_setup(cfg, s, data, device)

    def windows(k: int, arm: str) -> MetaWindows:
        over, second_order = JOINT_ARMS[arm]
        c = bench_config(s, **{**over, "meta.window": k, "meta.second_order": second_order})
        return MetaWindows(build_meta_learning(c.meta, c.rule, model, names, stats), streams)

    K, L, B = cfg.meta.window, cfg.meta.seg_len, streams.num_streams
    position = [0]

    def next_tokens():  # in step with the windows: each call the next window's tokens as one [K·L, B] batch
        x, y = window_tokens(streams, position[0], K, device)
        position[0] += K
        return x, y

    stage1 = LMSteps(cfg, stage1_model(cfg, data, device), next_tokens)
    reports: Dict[str, List] = {arm: [] for arm in JOINT_ARMS}
    timed = {arm: windows(K, arm) for arm in JOINT_ARMS}
    fns = {a: functools.partial(lambda a: reports[a].append(timed[a]()), a) for a in timed}
    times = interleaved({**fns, "stage1": stage1}, s.reps, s.warmup, device)
    n = K * L * B
    ratios = {arm: paired_ratio(times, arm, "stage1") for arm in JOINT_ARMS}
    print(f"joint_train per token / stage 1: {ratios}; measuring memory ...", file=sys.stderr, flush=True)
    timed.clear()  # their reading states are not part of the peaks below
    gc.collect()
    if device.type == "cpu":
        return_freed_memory()  # resident memory tracks what is live while measuring
    peaks: Dict[str, float] = {}
    extrapolated: List[str] = []
    for arm in JOINT_ARMS:
        windows(1, arm)()  # first-call allocations outside the measurements
        more, guessed, method = window_peaks(functools.partial(windows, arm=arm), s.joint_memory_windows, arm,
                                             device, warm=True)
        peaks.update(more)
        extrapolated += guessed
    if device.type == "cpu":
        keep_freed_memory()  # back to how the other figures (and training) allocate
    k_lo, k_hi = s.joint_memory_windows[0], s.joint_memory_windows[-1]
    memory = {a: peaks[f"K{k_hi}_{a}_mb"] / peaks[f"K{k_lo}_{a}_mb"] for a in JOINT_ARMS}
    return emit(
        "joint_train", ratios["first_order"], s, quick, device,
        bptt_first_ratio=ratios["bptt_first"], second_order_ratio=ratios["bptt_second"],
        second_order_target=f"<= {JOINT_SECOND_ORDER_TARGET}",
        second_order_met=bool(ratios["bptt_second"] <= JOINT_SECOND_ORDER_TARGET),
        **{f"{a}_ms_per_token": 1e3 * med(times[a]) / n for a in JOINT_ARMS},
        stage1_ms_per_token=1e3 * med(times["stage1"]) / n,
        skipped_windows=sum(bool(r.skipped) for rs in reports.values() for r in rs),
        **{f"memory_ratio_{a}": memory[a] for a in JOINT_ARMS},
        memory_ratio_name=f"K{k_hi} / K{k_lo}", memory_target=f"<= {JOINT_MEMORY_TARGET}",
        memory_met={a: bool(memory[a] <= JOINT_MEMORY_TARGET) for a in JOINT_ARMS}, method=method, **peaks,
        extrapolated=extrapolated,
        compared=f"meta_window (train_static=true, dynamic={list(cfg.meta.dynamic)}): estimator=first_order with "
                 f"rule=dyneval (ratio); estimator=bptt with rule={cfg.rule.name}, checkpointed="
                 f"{cfg.meta.checkpoint_segments}, first (bptt_first_ratio) and second order (second_order_ratio); "
                 "each vs lm_step on its tokens",
        sizes=sizes_of(cfg, data, B=B, L=L, K=K, memory_K=list(s.joint_memory_windows)),
    )


def fig_adaptive_eval(s: Sizes, device, quick: bool) -> dict:
    cfg = bench_config(s)
    data = synthetic_data(s)
    model, names, _, stats = stage2_setup(cfg, s, data, device)
    meta, cheap, dyneval = (build_rule(rule_config(k, like=cfg.rule), names, stats).to(device)
                            for k in ("gated", "cheap", "dyneval"))
    every = select_dynamic(model, ["*"])
    every_stats = rule_stats(cfg, s, model, every, data)
    cheap_all, dyneval_all = (build_rule(rule_config(k, like=cfg.rule), every, every_stats).to(device)
                              for k in ("cheap", "dyneval"))
    ids, eos, L = data.valid.ids[: s.eval_tokens], data.vocab.eos_id, cfg.meta.seg_len
    fns = {
        "static": lambda: read_stream(model, ids, eos, cfg.data.eval_bptt),
        "meta": lambda: read_stream(model, ids, eos, L, rule=meta, names=names),
        "cheap": lambda: read_stream(model, ids, eos, L, rule=cheap, names=names),
        "dyneval": lambda: read_stream(model, ids, eos, L, rule=dyneval, names=names),
        "cheap_all": lambda: read_stream(model, ids, eos, L, rule=cheap_all, names=every),
        "dyneval_all": lambda: read_stream(model, ids, eos, L, rule=dyneval_all, names=every),
    }
    times = interleaved(fns, s.reps if quick else max(3, s.reps - 2), s.warmup, device)
    n = ids.numel()
    r_meta = paired_ratio(times, "meta", "static")
    cheap_ratio = paired_ratio(times, "cheap", "dyneval")
    cheap_all_ratio = paired_ratio(times, "cheap_all", "dyneval_all")
    return emit(
        "adaptive_eval", r_meta, s, quick, device,
        ratio_dyneval=paired_ratio(times, "dyneval", "static"),
        static_ms_per_token=1e3 * med(times["static"]) / n, meta_ms_per_token=1e3 * med(times["meta"]) / n,
        dyneval_ms_per_token=1e3 * med(times["dyneval"]) / n, cheap_ms_per_token=1e3 * med(times["cheap"]) / n,
        # issue #14: the cheap learned rule costs at most 1.3× dyneval at the same L and adapted set
        cheap_vs_dyneval=cheap_ratio, cheap_vs_dyneval_target=f"<= {CHEAP_TARGET}",
        cheap_vs_dyneval_met=bool(cheap_ratio <= CHEAP_TARGET),
        cheap_vs_dyneval_all=cheap_all_ratio, cheap_vs_dyneval_all_met=bool(cheap_all_ratio <= CHEAP_TARGET),
        sizes=sizes_of(cfg, data, tokens=n, L=L, B=1, static_chunk=cfg.data.eval_bptt),
    )


# ----------------------------------------------------------------------------------------------- dyneval
def copy_bandwidth(device, mb: int = 256, reps: int = 5) -> float:
    """Bytes per second of `dst.copy_(src)` on a buffer far larger than the caches (read + write counted)."""
    src = torch.ones(mb * 2**20 // 4, device=device)
    dst = torch.empty_like(src)
    best = math.inf
    for _ in range(reps):
        _sync(device)
        t0 = time.perf_counter()
        dst.copy_(src)
        _sync(device)
        best = min(best, time.perf_counter() - t0)
    return 2 * src.numel() * 4 / best


# Passes over the dynamic weights that one segment of dyneval must make: read θ in the forward pass, read it
# again in the backward pass (∂h), then the update reads θ, θ0 and rms (from which flush and the step size follow)
# and writes θ'. The gradient g need not be written and read back: it is a sum of L outer products that the
# update can form as it goes (`dynlm/kernels/factored_gradient.py` does so: for the tied table the step reads θ,
# flush, flush·θ0 and gain, 7 passes in all, and for the LSTM matrices likewise, 7). The static weights are read twice
# (forward, and backward for ∂h): with the LSTM weights only adapting, the 26.6 MB decoder table is most of the
# bytes that must move.
DYNEVAL_PASSES = 6
STATIC_PASSES = 2


def fig_grad_stats(s: Sizes, device, quick: bool) -> dict:
    cfg = bench_config(s)
    data = synthetic_data(s)
    model = stage1_model(cfg, data, device).eval()
    names = select_dynamic(model, ["*"])
    n = s.gradstat_figure_tokens
    ids, eos = data.train.ids[:n], data.vocab.eos_id
    fns = {"stats": lambda: measured_stats(cfg, model, names, data.train, n),
           "static": lambda: read_stream(model, ids, eos, cfg.data.eval_bptt)}
    times = interleaved(fns, max(3, s.reps - 4), s.warmup, device)
    return emit(
        "grad_stats", paired_ratio(times, "stats", "static"), s, quick, device,
        stats_s=med(times["stats"]), static_s=med(times["static"]), tokens=n,
        compared=f"Krause's statistics of every parameter ({cfg.meta.gradstat_streams} streams x "
                 f"{cfg.meta.seg_len} tokens per batch, shared weights) vs static reading of the same tokens",
        sizes=sizes_of(cfg, data, streams=cfg.meta.gradstat_streams, L=cfg.meta.seg_len),
    )


def fig_dyneval(s: Sizes, device, quick: bool) -> dict:
    """The standard protocol (batch 1): dyneval per token / static, every parameter and the LSTM weights only,
    beside the bound that memory bandwidth sets; then `streams` article-aligned streams side by side."""
    cfg = bench_config(s)
    data = synthetic_data(s)
    model = stage1_model(cfg, data, device).eval()
    L, eos = cfg.meta.seg_len, data.vocab.eos_id
    rules, sizes, moved = {}, {}, {}
    total = sum(p.numel() * p.element_size() for p in model.parameters())
    for label, patterns in (("all", ["*"]), ("lstm", ["layers.*"])):
        names = select_dynamic(model, patterns)
        stats = rule_stats(cfg, s, model, names, data)
        rules[label] = (build_rule(rule_config("dyneval", like=cfg.rule), names, stats).to(device), names)
        sizes[label] = sum(t.numel() * t.element_size() for t in static_weights(model, names).values())
        moved[label] = DYNEVAL_PASSES * sizes[label] + STATIC_PASSES * (total - sizes[label])  # bytes per segment
    ids = data.valid.ids[: s.eval_tokens]
    fns = {"static": lambda: read_stream(model, ids, eos, cfg.data.eval_bptt)}
    for label, (rule, names) in rules.items():
        fns[label] = functools.partial(read_stream, model, ids, eos, L, rule=rule, names=names)
    times = interleaved(fns, max(3, s.reps - 2), s.warmup, device)
    n = ids.numel()
    bandwidth = copy_bandwidth(device)
    bound = {k: moved[k] / L / bandwidth for k in sizes}  # seconds per token
    ms = {k: 1e3 * med(times[k]) / n for k in fns}
    # multi-stream: each rule on the first `stream_tokens` valid tokens, as 1 and as `streams` streams
    more = data.valid.ids[: s.stream_tokens]
    arts = [int(a) for a in data.valid.article_starts if a < more.numel()]
    starts = stream_starts(arts, more.numel(), min(s.streams, len(arts)))
    multi = {}
    for label, (rule, names) in rules.items():
        multi[label + "_one"] = functools.partial(read_stream, model, more, eos, L, rule=rule, names=names)
        multi[label + "_many"] = functools.partial(multi[label + "_one"], starts=starts)
    mt = interleaved(multi, max(3, s.reps - 4), s.warmup, device)
    return emit(
        "dyneval", paired_ratio(times, "all", "static"), s, quick, device,
        ratio_lstm_only=paired_ratio(times, "lstm", "static"), static_ms_per_token=ms["static"],
        all_ms_per_token=ms["all"], lstm_ms_per_token=ms["lstm"],
        copy_bandwidth_gb_s=bandwidth / 1e9, passes=DYNEVAL_PASSES, static_passes=STATIC_PASSES,
        all_dynamic_mb=sizes["all"] / 2**20, lstm_dynamic_mb=sizes["lstm"] / 2**20,
        all_moved_mb_per_segment=moved["all"] / 2**20, lstm_moved_mb_per_segment=moved["lstm"] / 2**20,
        all_bound_ms_per_token=1e3 * bound["all"], lstm_bound_ms_per_token=1e3 * bound["lstm"],
        all_vs_bound=ms["all"] / (1e3 * bound["all"]), lstm_vs_bound=ms["lstm"] / (1e3 * bound["lstm"]),
        bound_target="<= 1.5", streams=len(starts), stream_tokens=more.numel(),
        multi_stream_speedup=paired_ratio(mt, "all_one", "all_many"), multi_stream_target=">= 1.7",
        multi_stream_speedup_lstm=paired_ratio(mt, "lstm_one", "lstm_many"),
        sizes=sizes_of(cfg, data, tokens=n, L=L, B=1, static_chunk=cfg.data.eval_bptt),
    )


# ----------------------------------------------------------------------------------------------- memory
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
            pinned = return_freed_memory()
            self.method = "peak RSS growth (/proc VmHWM after clear_refs)"
            self.method += ", mmap threshold 64 KiB" if pinned else ""

    def __enter__(self):
        gc.collect()
        trim_freed_memory()
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


def window_peaks(make: Callable[[int], MetaWindows], ks: Sequence[int], label: str, device,
                 warm: bool = False) -> Tuple[Dict[str, float], List[str], str]:
    """Peak memory in MB of one window of `make(K)` for each K of `ks` (increasing), keyed `K{K}_{label}_mb`; the
    keys extrapolated instead of run; the measuring method. On CPU a K whose peak, extrapolated linearly in K from
    the two previous ones (from the one previous one and zero at K = 0), would take more than 40% of the available
    memory is not run (the machine is shared).
    `warm`: one window is read before the measured one, so that what the optimiser allocates at its first step
    (Adam's moments, as large as θ0 when θ0 trains) is not counted as the window's."""
    peaks: Dict[str, float] = {}
    extrapolated: List[str] = []
    done: List[tuple] = []
    method = ""
    for k in ks:
        key = f"K{k}_{label}_mb"
        if done and device.type == "cpu":
            # linear in K through the two previous peaks, or (one so far) through the origin: an upper bound
            (k1, p1), (k2, p2) = done[-2:] if len(done) >= 2 else ((0, 0.0), done[0])
            guess = p2 + (p2 - p1) / (k2 - k1) * (k - k2)
            if guess * 2**20 > 0.4 * _available_bytes():
                peaks[key] = guess
                extrapolated.append(key)
                done.append((k, guess))
                continue
        win = make(k)
        if warm:
            win()
        gc.collect()
        with PeakMemory(device) as pm:
            win()
        method = pm.method
        peaks[key] = pm.peak / 2**20
        done.append((k, peaks[key]))
        del win
        gc.collect()
    return peaks, extrapolated, method


def fig_memory(s: Sizes, device, quick: bool) -> dict:
    """Peaks in MB for each K, in increasing K (`window_peaks`: a K too large for the machine is extrapolated)."""
    if device.type == "cpu":
        return_freed_memory()  # before anything is allocated for the measurements (the warm-up included)
    cfg = bench_config(s)
    data = synthetic_data(s)
    model, names, streams, stats = stage2_setup(cfg, s, data, device)

    def windows(k: int, ckpt: bool) -> MetaWindows:
        c = bench_config(s, **{"meta.window": k, "meta.checkpoint_segments": ckpt})
        return MetaWindows(build_meta_learning(c.meta, c.rule, model, names, stats), streams)

    peaks: Dict[str, float] = {}
    extrapolated: List[str] = []
    for ckpt in (True, False):  # first-call allocations (thread pools, lazy caches) outside the measurements
        windows(1, ckpt)()
    for ckpt in (True, False):
        more, guessed, method = window_peaks(functools.partial(windows, ckpt=ckpt), s.memory_windows,
                                             "ckpt" if ckpt else "plain", device)
        peaks.update(more)
        extrapolated += guessed
    k_lo, k_hi = s.memory_windows[0], s.memory_windows[-1]
    def es_windows(k: int) -> MetaWindows:
        c = bench_config(s, **{"meta.window": k, "meta.estimator": "es"})
        return MetaWindows(build_meta_learning(c.meta, c.rule, model, names, stats), streams)

    es_windows(1)()  # its first-call allocations outside the measurements too
    # the ES estimator: no graph, so its peak should not grow with K
    peaks.update(window_peaks(es_windows, (k_lo, k_hi), "es", device)[0])
    es_ratio = peaks[f"K{k_hi}_es_mb"] / peaks[f"K{k_lo}_es_mb"]
    ratio = peaks[f"K{k_hi}_ckpt_mb"] / peaks[f"K{k_lo}_ckpt_mb"]
    ckpt_vs_plain = peaks[f"K{k_hi}_ckpt_mb"] / peaks[f"K{k_hi}_plain_mb"]
    theta_bytes = streams.num_streams * sum(t.numel() * t.element_size()
                                            for t in static_weights(model, names).values())
    return emit(
        "memory", ratio, s, quick, device, ckpt_vs_plain=ckpt_vs_plain, ckpt_vs_plain_target="<= 0.5",
        ckpt_vs_plain_met=bool(ckpt_vs_plain <= 0.5), ratio_name=f"ckpt K{k_hi} / ckpt K{k_lo}",
        es_ratio=es_ratio, es_ratio_name=f"es K{k_hi} / es K{k_lo}", es_ratio_met=bool(es_ratio <= 1.5),
        method=method, **peaks, extrapolated=extrapolated, per_stream_theta_mb=theta_bytes / 2**20,
        sizes=sizes_of(cfg, data, B=streams.num_streams, L=cfg.meta.seg_len, K=list(s.memory_windows)),
    )


RUNNERS = {
    "lstm_fwd_bwd": fig_lstm_fwd_bwd, "lm_train": fig_lm_train, "meta_train": fig_meta_train,
    "joint_train": fig_joint_train, "adaptive_eval": fig_adaptive_eval, "grad_stats": fig_grad_stats,
    "dyneval": fig_dyneval, "memory": fig_memory,
}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default=",".join(FIGURES), help=f"comma-separated subset of {','.join(FIGURES)}")
    ap.add_argument("--quick", action="store_true", help="tiny sizes (model=tiny), a few seconds (smoke test)")
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
        s = dataclasses.replace(s, reps=args.reps)
    device = torch.device(args.device)
    threads = args.threads or (1 if args.quick else None)
    if threads:
        torch.set_num_threads(threads)
    keep_freed_memory()  # as training and evaluation on CPU run (run/allocator.py:keep_freed_memory_on)
    # memory last: it makes glibc return freed memory, which slows allocation for whatever runs after it
    for name in sorted(only, key=FIGURES.index):
        RUNNERS[name](s, device, args.quick)
        gc.collect()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
