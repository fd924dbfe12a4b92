"""`evaluate(cfg, run_dir)`: one checkpoint, one split or text file, the methods asked for, every report.

Called by `scripts/evaluate.py` (Hydra) and directly by tests; the protocol: docs/design.md §5.
Writes into `run_dir`:

    config.yaml / config.json   the resolved evaluation config
    results.json                overall, per-article and by-position numbers, checkpoint path + sha256, configs,
                                data checksums
    per_article.csv             index, title, tokens, words, NLL / loss / ppl per method
    token_losses.npz            every token's loss per method, with token ids, article ids and positions
    token_losses.csv            the same as text, one row per token (text=PATH only)
    metrics.jsonl               the overall numbers as `eval/<split>/<method>/<key>` scalars
    loss_by_position.png, article_ppl.png, instant_gain.png
    html/article_<index>.html   tokens coloured by the loss gain of the learned rule (or dyneval) over static, on
                                one colour scale for all pages (results.json: html_color_scale)
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional

import torch
from omegaconf import DictConfig
from torch import Tensor

from .. import dist
from ..dynamic.rules import LEARNED
from ..run.logger import RunLogger
from ..run.setup import config_dict, save_resolved_config
from .aggregate import (
    article_rows,
    bin_centers,
    first_diverged_article,
    method_totals,
    moving_average,
    position_bins,
    relative_position,
)
from .html import article_page, color_scale, helps_most_least
from .inputs import EvalInputs, load_inputs
from .methods import ensure_grad_stats, run_methods
from .outputs import write_article_csv, write_results, write_token_csv, write_token_losses
from .plots import plot_article_ppl, plot_instant_gain, plot_position
from .text_input import text_summary
from .wandb_panels import log_evaluation


def evaluate(cfg: DictConfig, run_dir: str | Path) -> Dict[str, Any]:
    run_dir = Path(run_dir)
    prep = load_inputs(cfg)  # every check that can fail does so here, before the long work
    e = cfg.eval
    save_resolved_config(cfg, run_dir)
    logger = RunLogger(run_dir, cfg.logger, {"eval": config_dict(cfg), "checkpoint_config": prep.ckpt["config"]})
    with dist.log_file(run_dir / "evaluate.log"):  # its messages, beside its results
        try:
            stats_info = None
            if len(prep.methods) > 1:
                stats, source = ensure_grad_stats(prep, e.gradstat_tokens, e.gradstat_streams, e.cache_grad_stats,
                                                  e.progress_bar)
                stats_info = {"source": source, "tokens": stats.tokens}
            losses, seconds = run_methods(prep, e.reset_per_article, e.progress_bar, streams=e.streams)
            check_static_weights(prep)
            results = build_results(cfg, prep, losses, seconds, stats_info)
            if not dist.is_main():
                return results
            images = make_plots(run_dir, prep, results, losses, e)
            pages = make_pages(run_dir, prep, results, losses, list(e.html_articles), e.html_min_tokens)
            results["html_articles"] = [int(p.stem.split("_")[-1]) for p in pages.values()]
            results["files"] = {
                "per_article_csv": "per_article.csv", "token_losses": "token_losses.npz",
                "plots": {k: p.name for k, p in images.items()},
                "html": {k: str(p.relative_to(run_dir)) for k, p in pages.items()},
            }
            sl = slice(0, prep.num_tokens)
            if prep.text is not None:  # a text of one's own: every token's loss, readable as it is
                results["files"]["token_losses_csv"] = "token_losses.csv"
                write_token_csv(run_dir / "token_losses.csv", prep.corpus.tokenizer.decode(prep.ids), losses,
                                prep.split.article_id[sl], prep.split.position[sl])
            write_results(run_dir / "results.json", results)
            write_article_csv(run_dir / "per_article.csv", results["articles"], prep.methods)
            write_token_losses(run_dir / "token_losses.npz", losses, prep.ids, prep.split.article_id[sl],
                               prep.split.position[sl], prep.article_starts, prep.split.titles[: prep.num_articles])
            logger.log(scalar_metrics(results), step=0)
            log_evaluation(logger, results, images, pages)
            print_summary(results, run_dir)
            return results
        finally:
            logger.finish()


def check_static_weights(prep: EvalInputs) -> None:
    """The static weights in memory are still the checkpoint's, bit for bit (evaluation only reads them)."""
    for n, p in prep.model.named_parameters():
        if not torch.equal(p.detach().cpu(), prep.ckpt["model"][n]):
            raise RuntimeError(f"static weight {n} changed during evaluation: this is a bug in dynlm")


def build_results(cfg, prep: EvalInputs, losses: Dict[str, Tensor], seconds: Dict[str, float],
                  stats_info: Optional[dict]) -> Dict[str, Any]:
    split, n = prep.split, prep.num_tokens
    article_id, position = split.article_id[:n], split.position[:n]
    per_word = prep.corpus.tokenizer.kind == "sentencepiece"
    num_words = sum(prep.words)
    rows = article_rows(losses, article_id, split.titles[: prep.num_articles], prep.words)
    methods = {m: {**method_totals(t, num_words, per_word), "seconds": seconds[m],
                   "diverged_at_article": first_diverged_article(rows, m)} for m, t in losses.items()}
    rel = relative_position(position, article_id, split.article_lengths)
    bins = int(cfg.eval.position_bins)
    loss_bins, count = {}, None
    for m, t in losses.items():
        mean, count = position_bins(t, rel, bins)
        loss_bins[m] = mean.tolist()
    gain_bins = {m: [s - x for s, x in zip(loss_bins["static"], loss_bins[m])] for m in losses if m != "static"}
    ckpt = prep.ckpt
    return {
        "split": split.name,  # "text" for a text file (text=PATH)
        "text": text_summary(prep.text) if prep.text is not None else None,
        "checkpoint": {"path": str(prep.ckpt_path), "sha256": prep.ckpt_sha256, "stage": ckpt.get("stage"),
                       "step": (ckpt.get("progress") or {}).get("step")},
        "data": {"source": prep.corpus.source, "tokenizer": prep.corpus.tokenizer.kind,
                 "vocab_size": prep.corpus.tokenizer.vocab_size, "checksums": dict(prep.corpus.checksums),
                 "checkpoint_checksums": dict(ckpt.get("data_checksums") or {})},
        "num_articles": prep.num_articles, "split_articles": split.num_articles,
        "num_tokens": n, "split_tokens": split.num_tokens, "num_words": num_words, "per_word": per_word,
        "reset_per_article": bool(cfg.eval.reset_per_article),
        "protocol": {"streams": int(cfg.eval.streams),
                     "name": "standard: one continuous stream, batch 1" if cfg.eval.streams == 1 else
                     f"{cfg.eval.streams} article-aligned streams read side by side, each from the static weights"},
        "seg_len": prep.seg_len if len(losses) > 1 else None, "chunk": prep.chunk,
        "grad_stats": stats_info,
        # each fixed rule's settings (dyneval: eta, lam, eps) and the parameters it adapted
        **{m: {**{k: v for k, v in c.items() if k != "name"}, "adapted": list(prep.names or [])}
           for m, c in prep.fixed_rules.items()},
        "methods": methods,
        "articles": rows,
        "position_bins": {"bins": bins, "centers": bin_centers(bins), "tokens": count.tolist(),
                          "loss": loss_bins, "gain": gain_bins},
        "static_weights_unchanged": True,
        "config": config_dict(cfg),
        "checkpoint_config": ckpt["config"],
    }


def _gain_method(methods: List[str]) -> Optional[str]:
    """The learned rule's when it ran, else the first fixed rule's."""
    adaptive = [m for m in methods if m != "static"]
    return LEARNED if LEARNED in adaptive else (adaptive[0] if adaptive else None)


def make_plots(run_dir: Path, prep: EvalInputs, results: dict, losses: Dict[str, Tensor], e) -> Dict[str, Path]:
    pos = results["position_bins"]
    split = results["split"]
    images = {
        "loss_by_position": plot_position(pos["centers"], pos["loss"], pos["gain"], run_dir / "loss_by_position.png",
                                          f"{split}: mean loss by relative position"),
        "article_ppl": plot_article_ppl(results["articles"], prep.methods, run_dir / "article_ppl.png",
                                        e.bar_articles),
    }
    adaptive = [m for m in prep.methods if m != "static"]
    if adaptive:
        first = min(int(e.gain_first_article), prep.num_articles - 1)
        last = min(first + int(e.gain_articles), prep.num_articles)
        starts = prep.article_starts.tolist() + [prep.num_tokens]
        a, b = starts[first], starts[last]
        gains = {m: moving_average(losses["static"][a:b] - losses[m][a:b], e.smooth) for m in adaptive}
        images["instant_gain"] = plot_instant_gain(
            gains, [s - a for s in starts[first:last]], prep.split.titles[first:last], e.smooth,
            run_dir / "instant_gain.png", offset=a)
    return images


def make_pages(run_dir: Path, prep: EvalInputs, results: dict, losses: Dict[str, Tensor], chosen: List[int],
               min_tokens: int) -> Dict[str, Path]:
    method = _gain_method(prep.methods)
    if method is None:
        return {}
    rows = results["articles"]
    extremes = helps_most_least(rows, method, min_tokens)  # named on every page
    chosen = chosen or [e.index for e in extremes]
    # one colour scale for every page, from every token evaluated: the same colour means the same gain on each
    scale = color_scale(losses["static"].double() - losses[method].double())
    results["html_color_scale"] = scale
    pages = {}
    tok = prep.corpus.tokenizer
    for a in dict.fromkeys(chosen):
        sl = prep.split.article_slice(a)
        r = rows[a]
        summary = f"ppl static {r['static']['ppl']:.2f} → {method} {r[method]['ppl']:.2f}"
        text = article_page(r["title"], a, tok.decode(prep.split.ids[sl]), tok.kind, losses["static"][sl],
                            losses[method][sl], method, scale=scale, summary=summary, extremes=extremes,
                            linked=chosen)
        path = run_dir / "html" / f"article_{a}.html"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        pages[f"article_{a}"] = path
    return pages


def scalar_metrics(results: dict) -> Dict[str, float]:
    out = {}
    for m, v in results["methods"].items():
        for k in ("nll", "tokens", "loss", "ppl", "word_ppl", "seconds"):
            if k in v:
                out[f"eval/{results['split']}/{m}/{k}"] = v[k]
    return out


DIVERGED_ADVICE = {
    "dyneval": "its steps are too large for these weights: lower eval.dyneval_eta (or the direction options)",
    "learned": "the learned rule's steps are too large on this text: compare with dyneval, and retrain or tune "
               "the rule on it",
}


def print_summary(results: dict, run_dir: Path) -> None:
    print0 = dist.print0
    print0(f"{results['split']}: {results['num_tokens']} tokens, {results['num_articles']} articles "
           f"({results['checkpoint']['path']})")
    for m, v in results["methods"].items():
        word = f"  word ppl {v['word_ppl']:.2f}" if "word_ppl" in v else ""
        print0(f"  {m:8s} ppl {v['ppl']:10.2f}  loss {v['loss']:.4f}{word}")
        if v.get("diverged_at_article") is not None:
            print0(f"  {m} diverged: its perplexity is not finite from article {v['diverged_at_article']} on; "
                   f"{DIVERGED_ADVICE.get(m, 'the checkpoint itself gives non-finite losses')}")
    if results.get("grad_stats") and results["grad_stats"]["source"] in ("measured", "cached"):
        stats = results["grad_stats"]
        print0(f"  (the fixed rules used gradient statistics measured on {stats['tokens']} train tokens, "
               f"{stats['source']})")
    text = results.get("text")
    if text is not None:
        print0(f"  ({text['unknown_words']} of {text['words']} words read as <unk>; every token's loss in "
               "token_losses.csv)")
    print0(f"results in {run_dir}")


__all__ = ["evaluate", "build_results", "check_static_weights"]
