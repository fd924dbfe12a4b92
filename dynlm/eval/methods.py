"""Running the methods on one checkpoint: per-token losses of the split (or its first articles) per method.

Every method goes through the one reading loop (`dynamic/reading.py`): the split read as one continuous stream,
the standard WikiText protocol (or as `eval.streams` article-aligned streams side by side); with
`reset_per_article` every article starts from a fresh state (zero (h, c), the static weights) for every method alike.
"""
from __future__ import annotations

import time
from typing import Dict, Optional, Tuple

from torch import Tensor, nn

from .. import dist
from ..dynamic.grad_stats import GradStats
from ..dynamic.reading import read_stream, stream_starts
from ..dynamic.rules import LEARNED, build_rule
from ..run.from_checkpoint import grad_stats_for
from ..run.progress import token_bar
from .inputs import EvalInputs


def ensure_grad_stats(inp: EvalInputs, tokens: Optional[int], streams: Optional[int], use_cache: bool = True,
                      progress_bar: bool = False) -> Tuple[GradStats, str]:
    """The checkpoint's statistics ("checkpoint"), or those of a stage-1 checkpoint: from the disk cache
    ("cached") or measured now on train tokens ("measured", then cached)."""
    stats, source = grad_stats_for(
        inp.model, inp.names, inp.ckpt, inp.ckpt_path, inp.corpus.splits.get("train"),
        inp.corpus.checksums.get("train", ""), tokens if tokens is not None else inp.ckpt_meta.gradstat_tokens,
        int(streams or inp.ckpt_meta.gradstat_streams), inp.seg_len, inp.data_cfg.get("cache_dir"), use_cache,
        ckpt_sha256=inp.ckpt_sha256, progress_bar=progress_bar)
    inp.stats = stats
    return stats, source


def run_methods(inp: EvalInputs, reset_per_article: bool, progress_bar: bool = True,
                rules: Optional[Dict[str, nn.Module]] = None, streams: int = 1
                ) -> Tuple[Dict[str, Tensor], Dict[str, float]]:
    """`({method: per-token NLL [N]}, {method: seconds})` in `inp.methods` order.

    `streams` > 1 reads the split as that many article-aligned streams side by side (`stream_starts`).
    `rules` (method -> rule) replaces the rules built from the checkpoint (tests).
    """
    ids = inp.ids
    starts = stream_starts(inp.article_starts.tolist(), inp.num_tokens, streams) if streams > 1 else [0]
    eos = inp.corpus.tokenizer.eos_id
    restarts = inp.article_starts.tolist() if reset_per_article else None
    rules = dict(rules or {})
    for method, rule_cfg in inp.fixed_rules.items():
        if method not in rules:
            rules[method] = build_rule(rule_cfg, inp.names, inp.stats).to(inp.device)
    if LEARNED in inp.methods and LEARNED not in rules:
        rules[LEARNED] = inp.learner
    losses: Dict[str, Tensor] = {}
    seconds: Dict[str, float] = {}
    for method in inp.methods:
        started = time.time()
        with token_bar(ids.numel(), method, progress_bar) as bar:
            if method == "static":
                losses[method] = read_stream(inp.model, ids, eos, inp.chunk, restarts=restarts, on_segment=bar.update,
                                             starts=starts)
            else:
                losses[method] = read_stream(inp.model, ids, eos, inp.seg_len, rule=rules[method], names=inp.names,
                                             restarts=restarts, on_segment=bar.update, starts=starts)
        seconds[method] = time.time() - started
        dist.print0(f"{method}: {ids.numel()} tokens in {seconds[method]:.1f}s")
    return losses, seconds


__all__ = ["ensure_grad_stats", "run_methods"]
