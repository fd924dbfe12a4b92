"""Running the methods on one checkpoint: per-token losses of the split (or its first articles) per method.

The split is read as one continuous stream, the standard WikiText protocol; with `reset_per_article` every
article starts from a fresh state (zero (h, c), the static weights) for every method alike.
"""
from __future__ import annotations

import time
from typing import Dict, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn
from tqdm import tqdm

from .. import dist
from ..data import MetaStreams
from ..dynamic.grad_stats import GradStats, measure_grad_stats
from ..dynamic.rules import build_rule
from .adaptive import adaptive_token_nll
from .grad_stats_cache import cache_path, load_cached, save_cached
from .prepare import Prepared
from .static import static_token_nll


def static_losses(model: nn.Module, ids: Tensor, eos_id: int, chunk: int,
                  restarts: Optional[Sequence[int]] = None) -> Tensor:
    """Per-token NLL `[N]`; with `restarts`, each piece is read from a fresh state.

    A fresh piece is primed with `<eos>`, which is the token before every article start (its last line is
    blank), so this is the same as resetting (h, c) inside one stream.
    """
    if not restarts:
        return static_token_nll(model, ids, eos_id, chunk)
    cuts = sorted(set(int(r) for r in restarts) | {0, ids.numel()})
    return torch.cat([static_token_nll(model, ids[a:b], eos_id, chunk) for a, b in zip(cuts[:-1], cuts[1:]) if b > a])


def ensure_grad_stats(prep: Prepared, tokens: int, streams: Optional[int], use_cache: bool = True
                      ) -> Tuple[GradStats, str]:
    """The checkpoint's statistics ("checkpoint"), or those of a stage-1 checkpoint: from the disk cache
    ("cached") or measured now on train tokens ("measured", then cached)."""
    if prep.stats is not None:
        return prep.stats, "checkpoint"
    b = int(streams or prep.ckpt_meta.batch_size)
    train = prep.corpus.splits["train"]
    path = cache_path(prep.data_cfg.get("cache_dir"), prep.ckpt_sha256, prep.corpus.checksums["train"], prep.names,
                      tokens, b, prep.seg_len)
    stats = load_cached(path, prep.names, prep.device) if use_cache else None
    if stats is not None:
        dist.print0(f"dyneval: gradient statistics of {prep.ckpt_path.name} on {stats.tokens} train tokens, "
                    f"from the cache {path}")
        prep.stats = stats
        return stats, "cached"
    dist.print0(
        f"dyneval: {prep.ckpt_path.name} has no gradient statistics (a stage-1 checkpoint); measuring them on "
        f"{tokens} train tokens ({b} streams of {prep.seg_len}-token segments, eval.gradstat_tokens) ..."
    )
    started = time.time()
    stats = measure_grad_stats(prep.model, prep.names, MetaStreams(train, b, prep.seg_len), tokens)
    dist.print0(f"dyneval: measured on {stats.tokens} train tokens in {time.time() - started:.0f}s")
    if use_cache and dist.is_main() and save_cached(path, stats):
        dist.print0(f"dyneval: cached in {path} (eval.cache_grad_stats=false to measure every time)")
    prep.stats = stats
    return stats, "measured"


def run_methods(prep: Prepared, reset_per_article: bool, progress_bar: bool = True,
                rules: Optional[Dict[str, nn.Module]] = None) -> Tuple[Dict[str, Tensor], Dict[str, float]]:
    """`({method: per-token NLL [N]}, {method: seconds})` in `prep.methods` order.

    `rules` (method -> rule) replaces the rules built from the checkpoint (tests).
    """
    ids = prep.ids
    eos = prep.corpus.tokenizer.eos_id
    restarts = prep.article_starts.tolist() if reset_per_article else None
    rules = dict(rules or {})
    if "dyneval" in prep.methods and "dyneval" not in rules:
        rules["dyneval"] = build_rule(prep.dyneval_cfg, prep.names, prep.stats, name="dyneval").to(prep.device)
    if "meta" in prep.methods and "meta" not in rules:
        rules["meta"] = prep.learner
    losses: Dict[str, Tensor] = {}
    seconds: Dict[str, float] = {}
    for method in prep.methods:
        started = time.time()
        if method == "static":
            losses[method] = static_losses(prep.model, ids, eos, prep.chunk, restarts)
        else:
            bar = tqdm(total=ids.numel(), desc=method, unit="tok", dynamic_ncols=True,
                       disable=not (progress_bar and dist.is_main()))
            try:
                losses[method] = adaptive_token_nll(prep.model, rules[method], prep.names, ids, eos, prep.seg_len,
                                                    restarts=restarts, on_segment=bar.update)
            finally:
                bar.close()
        seconds[method] = time.time() - started
        dist.print0(f"{method}: {ids.numel()} tokens in {seconds[method]:.1f}s")
    return losses, seconds


__all__ = ["ensure_grad_stats", "run_methods", "static_losses"]
