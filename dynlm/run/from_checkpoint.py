"""The one path from a checkpoint to objects: the language model, the meta-learner and the gradient statistics.

Stage 2, evaluation and the benchmark all go through here, so a checkpoint means the same thing to each of them.
The gradient statistics come from the checkpoint when it has them (stage 2 stores them), else from the disk
cache (`grad_stats_cache.py`), else they are measured now (and cached). The train articles held out of stage 1
(`data.meta_holdout_articles`) are the checkpoint's too, so every run from it reads the train split its stage 1 read.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple

import torch
from omegaconf import OmegaConf
from torch import nn

from .. import dist
from ..cache import sha256_file
from ..data import HELDOUT, Split
from ..dynamic.grad_stats import GradStats, measure_grad_stats
from ..dynamic.rules import build_rule, rule_spec
from ..model import AWDLSTM, build_model
from .checkpoint import CheckpointError, load_checkpoint, load_weights
from .grad_stats_cache import cache_path, load_cached, save_cached
from .progress import token_bar


def lm_from_checkpoint(ckpt: Dict[str, Any], path: str | Path) -> AWDLSTM:
    """The model its stored config describes, with the checkpoint's evaluation weights (`ckpt["model"]`)."""
    weights = ckpt.get("model")
    if not isinstance(weights, dict) or "embedding.weight" not in weights:
        raise CheckpointError(f"{path} has no embedding.weight: is it a dynlm language-model checkpoint?")
    if not isinstance(ckpt.get("config"), dict) or "model" not in ckpt["config"]:
        raise CheckpointError(f"{path} has no model config: is it a dynlm training checkpoint?")
    try:
        model = build_model(OmegaConf.create(ckpt["config"]["model"]), _vocab_size(ckpt))
    except Exception as e:  # noqa: BLE001 - a missing or mistyped key in the stored model config
        raise CheckpointError(f"the model config stored in {path} cannot build a model ({e})") from None
    load_weights(model, weights, source=f"checkpoint {path}")
    return model


def load_lm(path: str | Path, device: torch.device) -> Tuple[AWDLSTM, Dict[str, Any]]:
    """`lm_from_checkpoint` of the file at `path`, on `device`, and the checkpoint itself."""
    ckpt = load_checkpoint(path, map_location="cpu")
    return lm_from_checkpoint(ckpt, path).to(device), ckpt


def _vocab_size(ckpt: Dict[str, Any]) -> int:
    return int(ckpt["model"]["embedding.weight"].shape[0])


def check_data_matches(ckpt: Dict[str, Any], corpus, path: str | Path) -> None:
    """The checkpoint's tokenizer must be the corpus's: same vocabulary, same ids."""
    vocab = _vocab_size(ckpt)
    if vocab != corpus.tokenizer.vocab_size:
        raise CheckpointError(
            f"checkpoint {path} has a vocabulary of {vocab} but the data gives {corpus.tokenizer.vocab_size} "
            f"(data.tokenizer={corpus.tokenizer.kind}). Use the data settings it was trained with: "
            f"{ckpt['config'].get('data')}"
        )
    if ckpt.get("tokenizer") is not None and not _same_tokenizer(ckpt["tokenizer"], corpus.tokenizer.state_dict()):
        raise CheckpointError(
            f"checkpoint {path} was trained with a different vocabulary (same size, different ids) than the data "
            f"at {corpus.source}. Use the data it was trained with: {ckpt['config'].get('data')}"
        )


def holdout_articles(asked: int, ckpt: Dict[str, Any], path: str | Path) -> int:
    """The number of train articles the checkpoint's stage 1 kept out (`data.meta_holdout_articles`).

    A run from a checkpoint reads the train split its stage 1 read (stage 2's held-out articles, the statistics of
    dyneval), so `asked` must be 0 (the default: take the checkpoint's) or that same number.
    """
    stored = int(((ckpt.get("config") or {}).get("data") or {}).get("meta_holdout_articles") or 0)
    if asked and asked != stored:
        raise CheckpointError(
            f"data.meta_holdout_articles={asked} but checkpoint {path} was trained with {stored}: a run from a "
            "checkpoint reads the train articles its stage 1 read and held out. Leave data.meta_holdout_articles "
            "unset, or train a stage 1 with the number you want."
        )
    return stored


def check_heldout_matches(ckpt: Dict[str, Any], corpus, path: str | Path) -> None:
    """The held-out articles of the data are those the checkpoint's stage 1 kept out: the same text (sha256)."""
    stored, read = (ckpt.get("data_checksums") or {}).get(HELDOUT), corpus.checksums.get(HELDOUT)
    if stored is not None and read is not None and stored != read:
        raise CheckpointError(
            f"the held-out articles at {corpus.source} are not those checkpoint {path} kept out of stage 1 (another "
            "sha256), so stage 1 may have trained on them. Use the data it was trained with: "
            f"{ckpt['config'].get('data')}"
        )


def check_resumed_data(ckpt: Dict[str, Any], corpus, path: str | Path) -> None:
    """A resume goes on reading where its run stopped and compares validations with its best: the data must be
    the run's own, its tokenizer (`check_data_matches`) and the text of every split it read (sha256)."""
    check_data_matches(ckpt, corpus, path)
    stored = ckpt.get("data_checksums") or {}
    changed = [s for s, sha in corpus.checksums.items() if s in stored and stored[s] != sha]
    if changed:
        data = (ckpt.get("config") or {}).get("data") or {}
        was = f"data.dir={data['dir']}" if data.get("dir") else f"data.hub_config={data.get('hub_config')}"
        raise CheckpointError(
            f"the {' and '.join(changed)} text at {corpus.source} is not what the run of checkpoint {path} read "
            f"(another sha256), and a resume goes on reading its data where it stopped. Resume with the data it was "
            f"trained with ({was}), or start a new run (a fresh hydra.run.dir=..., or trainer.overwrite=true)."
        )


def _same_tokenizer(a: Any, b: Any) -> bool:
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same_tokenizer(a[k], b[k]) for k in a)
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return torch.equal(torch.as_tensor(a), torch.as_tensor(b))
    return a == b


def load_learner(ckpt: Dict[str, Any], names: Sequence[str], stats: GradStats, path: str | Path,
                 device: torch.device) -> nn.Module:
    """The learned rule of a stage-2 checkpoint, as its stored config (`rule`) describes it, with its trained φ."""
    rule_cfg = ckpt["config"]["rule"]
    if not rule_spec(rule_cfg.get("name")).learned:
        raise CheckpointError(f"checkpoint {path} stores a learner but its config names the fixed rule "
                              f"{rule_cfg.get('name')}: was it edited?")
    learner = build_rule(rule_cfg, names, stats)
    try:
        learner.load_state_dict(ckpt["meta_learner"])
    except RuntimeError as e:
        raise CheckpointError(
            f"the learned rule in checkpoint {path} does not match the one its config.rule describes ({e}). "
            "Was the checkpoint edited, or written by another version of dynlm?"
        ) from None
    return learner.to(device)


def stored_grad_stats(ckpt: Dict[str, Any], names: Sequence[str], device) -> Optional[GradStats]:
    """The statistics the checkpoint carries (stage 2 stores them), or None: a stage-1 checkpoint, or `names` that
    its stage 2 did not adapt (`eval.dynamic` on a stage-2 checkpoint)."""
    if ckpt.get("grad_stats") is None or not set(names) <= set(ckpt["grad_stats"]["v"]):
        return None
    return GradStats.from_state_dict(ckpt["grad_stats"], device).restricted(names)


def measure_grad_stats_now(model: nn.Module, names: Sequence[str], split: Split, tokens: Optional[int], streams: int,
                           seg_len: int, why: str, progress_bar: bool = False) -> GradStats:
    """`measure_grad_stats` of `model` on `split`, saying `why` (what names the statistics) and how long it took.
    Not cached: the cache is for the statistics of a checkpoint's weights."""
    # a request beyond the split reads all of it (measure_grad_stats stops at its end): say so
    whole = tokens is None or tokens >= split.num_tokens
    amount = f"all {split.num_tokens}" if whole else f"{tokens}"
    dist.print0(f"{why}; measuring them on {amount} {split.name} tokens (batches of {streams} streams × {seg_len} "
                "tokens) ...")
    started = time.time()
    with token_bar(min(tokens or split.num_tokens, split.num_tokens), "gradient statistics", progress_bar) as bar:
        stats = measure_grad_stats(model, names, split.ids, streams, seg_len, tokens, on_batch=bar.update)
    dist.print0(f"measured on {stats.tokens} {split.name} tokens in {time.time() - started:.0f}s")
    return stats


def grad_stats_for(
    model: nn.Module,
    names: Sequence[str],
    ckpt: Dict[str, Any],
    ckpt_path: str | Path,
    split: Split,
    split_sha256: str,
    tokens: Optional[int],
    streams: int,
    seg_len: int,
    cache_dir: Optional[str] = None,
    use_cache: bool = True,
    ckpt_sha256: Optional[str] = None,
    progress_bar: bool = False,
) -> Tuple[GradStats, str]:
    """The gradient statistics of `model` for the dynamic `names`, and where they came from: "checkpoint",
    "cached" or "measured" (Krause's, on `tokens` tokens of `split`, all of it when None, in batches of `streams`
    streams × `seg_len` tokens; then cached unless `use_cache` is false)."""
    device = next(model.parameters()).device
    stats = stored_grad_stats(ckpt, names, device)
    if stats is not None:
        return stats, "checkpoint"
    path = Path(ckpt_path)
    cached = None
    if use_cache:  # measured and cached for every parameter: one measurement serves every adapted set
        every = [n for n, _ in model.named_parameters()]
        cached = cache_path(cache_dir, ckpt_sha256 or sha256_file(path), split_sha256, every, tokens, streams, seg_len)
        stats = load_cached(cached, every, device)
        if dist.sum_floats(float(stats is None))[0] > 0:  # every rank measures, or none does
            stats = None
    if stats is not None:
        dist.print0(f"gradient statistics of {path.name} on {stats.tokens} {split.name} tokens, from the cache "
                    f"{cached}")
        return stats.restricted(names), "cached"
    lacking = " (a stage-1 checkpoint)" if ckpt.get("grad_stats") is None else " of every parameter adapted here"
    stats = measure_grad_stats_now(model, every if cached is not None else names, split, tokens, streams, seg_len,
                                   f"{path.name} has no gradient statistics{lacking}", progress_bar)
    if cached is not None and dist.is_main() and save_cached(cached, stats):
        dist.print0(f"cached in {cached} (every parameter)")
    return stats.restricted(names), "measured"


__all__ = ["check_data_matches", "check_heldout_matches", "check_resumed_data", "grad_stats_for", "holdout_articles",
           "lm_from_checkpoint", "load_learner", "load_lm", "measure_grad_stats_now", "stored_grad_stats",
           "CheckpointError"]
