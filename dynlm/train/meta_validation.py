"""The quick adaptive validation of stage 2: static, the fixed rules (dyneval) and the learned rule (`learned`) on
the first valid articles.

It reads the first `meta.valid_articles` valid articles, at most `meta.valid_max_tokens` tokens of them. A fixed rule
runs with the learned rule's keys it shares (η, λ, ε: where the learned rule started). The first valid article is
also followed through training: its loss by position (every method; means over 50 chunks) is appended to
`<run dir>/valid_article.jsonl` and, with `logger=wandb`, drawn as line plots (`valid/article/loss_curve`, and
`valid/article/learned_gain_history` with one curve per evaluation so far, so the dashboard shows the gain growing
as meta-training goes on); the mean gain of the learned rule in each quarter of the article is logged as
`valid/article/learned_gain_q{1..4}`. It reuses the losses already computed, so it costs nothing extra.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence

from torch import Tensor

from .. import dist
from ..dynamic.reading import read_stream
from ..dynamic.rules import LEARNED, build_rule, rule_config, rule_names
from ..run.dashboard import active, chunk_means, line_series
from ..run.jsonl import ends_torn, read_jsonl
from ..run.progress import token_bar

CURVE_POINTS = 50
HISTORY = 8  # evaluations shown in the gain-history plot
CURVES_FILE = "valid_article.jsonl"


def quick_valid_tokens(split, valid_articles: int, max_tokens: Optional[int]) -> int:
    """Tokens read by the quick validation: the first `valid_articles` articles, capped at `max_tokens`."""
    n_art = min(valid_articles, split.num_articles)
    end = int(split.article_starts[n_art]) if n_art < split.num_articles else split.ids.numel()
    return end if max_tokens is None else min(end, int(max_tokens))


def quick_adaptive_valid(model, learner, stats, names, corpus, cfg, logger=None,
                         step: Optional[int] = None) -> Dict[str, float]:
    split = corpus.splits["valid"]
    ids = split.ids[: quick_valid_tokens(split, cfg.meta.valid_articles, cfg.meta.valid_max_tokens)]
    eos, seg = corpus.tokenizer.eos_id, cfg.meta.seg_len
    device = next(model.parameters()).device
    rules = {n: build_rule(rule_config(n, like=cfg.rule), names, stats).to(device) for n in rule_names(learned=False)}
    rules[LEARNED] = learner
    label = f"valid (static, {', '.join(rules)})"
    with token_bar((1 + len(rules)) * ids.numel(), label, cfg.trainer.progress_bar) as bar:
        results = {"static": read_stream(model, ids, eos, cfg.data.eval_bptt, on_segment=bar.update)}
        for method, rule in rules.items():
            results[method] = read_stream(model, ids, eos, seg, rule=rule, names=names, on_segment=bar.update)
    metrics: Dict[str, float] = {"valid/tokens": float(ids.numel())}
    for method, nll in results.items():
        loss = float(nll.double().mean())
        metrics[f"valid/{method}/loss"] = loss
        metrics[f"valid/{method}/ppl"] = math.exp(loss)
    if logger is not None:
        first = min(int(split.article_lengths[0]), ids.numel())
        metrics.update(follow_article(logger, step or 0, split.titles[0], {m: t[:first] for m, t in results.items()}))
    return metrics


def quarter_gains(static: Tensor, learned: Tensor) -> Dict[str, float]:
    n = static.numel()
    gain = static.double() - learned.double()
    bounds = [round(n * q / 4) for q in range(5)]
    return {f"valid/article/{LEARNED}_gain_q{q + 1}": float(gain[bounds[q] : bounds[q + 1]].mean())
            for q in range(4) if bounds[q + 1] > bounds[q]}


def follow_article(logger, step: int, title: str, losses: Mapping[str, Tensor]) -> Dict[str, float]:
    """Record (file, wandb) the loss through the followed article; returns its quarter gains (scalars)."""
    xs: List[int] = []
    curves: Dict[str, List[float]] = {}
    for m, nll in losses.items():
        starts, means = chunk_means(nll, CURVE_POINTS)
        xs, curves[m] = starts.tolist(), means.tolist()
    record = {"step": step, "title": title, "tokens": int(losses["static"].numel()), "x": xs, **curves}
    history = _append(Path(logger.run_dir) / CURVES_FILE, record) if getattr(logger, "enabled", False) else [record]
    log_valid_article(logger, step, title, xs, curves, history[-HISTORY:])
    return quarter_gains(losses["static"], losses[LEARNED])


def log_valid_article(logger, step: int, title: str, xs: Sequence[int], curves: Mapping[str, Sequence[float]],
                      history: Sequence[dict]) -> None:
    """The loss through the fixed validation article now, and the learned rule's gain curves so far (wandb only)."""
    if not active(logger):
        return
    items = {
        "valid/article/loss_curve": line_series(
            xs, curves, f"valid article '{title}': loss by position (step {step})", "position in the article"),
    }
    if history:
        gains = {f"step {h['step']}": [s - m for s, m in zip(h["static"], h[LEARNED])] for h in history}
        items[f"valid/article/{LEARNED}_gain_history"] = line_series(
            history[-1]["x"], gains, f"valid article '{title}': learned rule's gain over static, by meta-training step",
            "position in the article")
    logger.log_media(items, step=step)


def _append(path: Path, record: dict) -> List[dict]:
    """Append `record` to the JSONL file and return the records of the same article (a resumed run included)."""
    old, torn = read_jsonl(path)
    if torn:
        dist.print0(f"skipped {torn} torn line(s) of {path} (a write that was killed)")
    with open(path, "a", encoding="utf-8") as f:
        f.write(("\n" if ends_torn(path) else "") + json.dumps(record) + "\n")
    same = [r for r in old if r.get("title") == record["title"] and r.get("x") == record["x"]
            and r["step"] < record["step"] and LEARNED in r]  # a run resumed across the rename of `meta` too
    return same + [record]


__all__ = ["CURVES_FILE", "follow_article", "quarter_gains", "quick_adaptive_valid", "quick_valid_tokens"]
