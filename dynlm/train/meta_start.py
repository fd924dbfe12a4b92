"""Where stage 2 starts: a stage-1 checkpoint (or the stage-2 checkpoint it resumes), or a model built fresh from
the config (`meta.lm_checkpoint=null`: joint training from scratch, issue #25). Either way it gives the same things:
the effective config (what the run's checkpoints record), the corpus, θ0, the dynamic names and the gradient
statistics of θ0.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch
from omegaconf import DictConfig, OmegaConf

from ..config import ConfigValueError
from ..data import HELDOUT, Corpus, load_corpus
from ..dynamic.fast_weights import select_dynamic
from ..dynamic.grad_stats import GradStats
from ..model import AWDLSTM, build_model
from ..run.checkpoint import load_checkpoint
from ..run.from_checkpoint import (
    check_data_matches,
    check_heldout_matches,
    check_resumed_data,
    grad_stats_for,
    holdout_articles,
    lm_from_checkpoint,
    measure_grad_stats_now,
)


@dataclass
class MetaStart:
    cfg: DictConfig  # the run's config with what it starts from recorded: the model, the held-out cut, the split
    corpus: Corpus  # the split stage 2 reads, train (the statistics are measured on it) and valid
    model: AWDLSTM  # θ0
    names: List[str]  # the dynamic parameters
    stats: GradStats  # of θ0, for `names`


def check_start(mc: DictConfig) -> None:
    """What a stage 2 without a stage-1 checkpoint can train, and the keys of the statistics' re-measurement."""
    if mc.lm_checkpoint is None and not mc.train_static:
        raise ConfigValueError("stage=meta without meta.lm_checkpoint starts from a random model, and a rule learned "
                               "on a random model is of no use: pass meta.lm_checkpoint=<a stage-1 best.pt>, or set "
                               "meta.train_static=true to train θ0 from scratch with the rule in the loop")
    if mc.lm_checkpoint is None and mc.ewc:
        raise ConfigValueError(f"meta.ewc={mc.ewc} pulls θ0 toward the stage-1 weights, and a run from scratch "
                               "(meta.lm_checkpoint=null) has none: remove meta.ewc, or pass meta.lm_checkpoint")
    refresh = mc.gradstat_refresh if mc.train_static else None  # set without it, config.ONLY_WITH refuses it
    if refresh and mc.ewc:
        raise ConfigValueError(f"meta.ewc={mc.ewc} weighs θ0's distance from the stage-1 weights by their gradient "
                               "statistics, which meta.gradstat_refresh replaces by those of the current θ0: use one "
                               "of the two")
    if mc.gradstat_refresh_tokens is not None and refresh is None:
        raise ConfigValueError(f"meta.gradstat_refresh_tokens={mc.gradstat_refresh_tokens} has no effect without "
                               "meta.gradstat_refresh: remove it, or set meta.gradstat_refresh=<steps>")


def meta_split(asked: Optional[str], held: int, resumed: Optional[Dict[str, Any]], scratch: bool = False) -> str:
    """The split stage 2 reads: `meta.split`, else (a resumed run) the one it began with, else the held-out
    articles when stage 1 kept some out (what they are for), else train. From scratch (`scratch`) θ0 learns the
    language from train: the held-out articles stay out of it by default, as they stay out of stage 1."""
    if asked is None and resumed is not None:
        asked = ((resumed.get("config") or {}).get("meta") or {}).get("split")
    if asked is None:
        return HELDOUT if held and not scratch else "train"
    if asked not in ("train", HELDOUT):
        raise ConfigValueError(f"meta.split={asked!r}: use train or {HELDOUT} (valid chooses checkpoints, test "
                               "reports)")
    if asked == HELDOUT and not held:
        kept = "this run keeps no articles out" if scratch else "the stage-1 checkpoint kept no articles out"
        fix = "Set" if scratch else "Train stage 1 with"
        raise ConfigValueError(
            f"meta.split={HELDOUT} but {kept}. {fix} data.meta_holdout_articles=N, or leave meta.split unset to "
            "meta-train on train."
        )
    return asked


def _splits(split: str):
    # train too: the gradient statistics are measured on what θ0 trained on, whatever meta.split reads
    return tuple(dict.fromkeys([split, "train", "valid"]))


def from_checkpoint(cfg: DictConfig, device: torch.device, resumed: Optional[Dict[str, Any]],
                    path: Optional[Path]) -> MetaStart:
    """θ0, the held-out cut and the model config of a stage-1 checkpoint (`meta.lm_checkpoint`), or of the stage-2
    checkpoint `resumed` (from `path`)."""
    mc = cfg.meta
    lm_path = path if resumed is not None else mc.lm_checkpoint
    lm_ckpt = resumed if resumed is not None else load_checkpoint(lm_path, map_location="cpu")
    model = lm_from_checkpoint(lm_ckpt, lm_path).to(device)
    # The model and the train/held-out cut are the checkpoint's: record them so this run's checkpoints say so.
    held = holdout_articles(cfg.data.meta_holdout_articles, lm_ckpt, lm_path)
    split = meta_split(mc.split, held, resumed)
    cfg = OmegaConf.merge(cfg, {"model": lm_ckpt["config"]["model"], "data": {"meta_holdout_articles": held},
                                "meta": {"split": split}})
    corpus = load_corpus(cfg.data, splits=_splits(split))
    check_data_matches(lm_ckpt, corpus, lm_path)
    check_heldout_matches(lm_ckpt, corpus, lm_path)
    if resumed is not None:
        check_resumed_data(resumed, corpus, path)
    names = select_dynamic(model, mc.dynamic)
    stats, _ = grad_stats_for(model, names, lm_ckpt, lm_path, corpus.splits["train"], corpus.checksums["train"],
                              mc.gradstat_tokens, mc.gradstat_streams, mc.seg_len, cfg.data.cache_dir,
                              progress_bar=cfg.trainer.progress_bar)
    return MetaStart(cfg, corpus, model, names, stats)


def from_scratch(cfg: DictConfig, device: torch.device) -> MetaStart:
    """θ0 as stage 1 starts it: the corpus (train without the last `data.meta_holdout_articles` articles), then the
    model `cfg.model` describes for its vocabulary, drawn from the RNG the scaffold seeded with `trainer.seed`. Its
    statistics are measured now, on the fresh weights (`meta.gradstat_refresh` measures them again as θ0 trains)."""
    mc = cfg.meta
    held = int(cfg.data.meta_holdout_articles)
    cfg = OmegaConf.merge(cfg, {"meta": {"split": meta_split(mc.split, held, None, scratch=True)}})
    corpus = load_corpus(cfg.data, splits=_splits(cfg.meta.split))
    model = build_model(cfg.model, corpus.tokenizer.vocab_size).to(device)
    names = select_dynamic(model, mc.dynamic)
    stats = measure_grad_stats_now(model, names, corpus.splits["train"], mc.gradstat_tokens, mc.gradstat_streams,
                                   mc.seg_len, "stage 2 from scratch (meta.lm_checkpoint=null): a fresh θ0 has no "
                                   "gradient statistics", cfg.trainer.progress_bar)
    return MetaStart(cfg, corpus, model, names, stats)


def meta_start(cfg: DictConfig, device: torch.device, resumed: Optional[Dict[str, Any]],
               path: Optional[Path]) -> MetaStart:
    """A resume starts from its own checkpoint, whatever the first run started from."""
    check_start(cfg.meta)
    if resumed is None and cfg.meta.lm_checkpoint is None:
        return from_scratch(cfg, device)
    return from_checkpoint(cfg, device, resumed, path)


__all__ = ["MetaStart", "check_start", "from_checkpoint", "from_scratch", "meta_split", "meta_start"]
