"""Builders for the evaluation tests: checkpoints made without training, small synthetic corpora."""
from __future__ import annotations

import random
from pathlib import Path
from typing import Sequence

import pytest
import torch

from dynlm.data import load_corpus
from dynlm.dynamic.fast_weights import select_dynamic
from dynlm.dynamic.grad_stats import GradStats
from dynlm.dynamic.rules import build_rule
from dynlm.eval.config import register_eval_configs
from dynlm.model import build_model
from dynlm.run.checkpoint import save_checkpoint
from dynlm.run.setup import config_dict
from hydra_helpers import CONF_DIR, compose_config


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models on a shared 2-core machine: one intra-op thread is faster and far steadier (with two, a
    busy machine makes oneDNN's LSTM stall for seconds). Import it into a test module to use it there."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def compose_eval(overrides: Sequence[str] = ()):
    from hydra import compose, initialize_config_dir

    register_eval_configs()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="evaluate", overrides=list(overrides))


def make_checkpoint(data_dir: Path, path: Path, stage: str = "lm", overrides: Sequence[str] = (), seed: int = 0,
                    learner_fn=None) -> Path:
    """A checkpoint in the trainer's format for a randomly initialised `model=tiny` (no training).

    `stage="meta"` adds dynamic names, gradient statistics v = 1 and an untrained meta-learner
    (`learner_fn(learner)` may edit it first).
    """
    cfg = compose_config(["model=tiny", f"data.dir={data_dir}", "trainer.device=cpu", *overrides])
    corpus = load_corpus(cfg.data)
    torch.manual_seed(seed)
    model = build_model(cfg.model, corpus.tokenizer.vocab_size)
    payload = {
        "stage": stage, "config": config_dict(cfg), "tokenizer": corpus.tokenizer.state_dict(),
        "data_checksums": dict(corpus.checksums), "model": {n: p.detach().clone() for n, p in model.named_parameters()},
        "progress": {"step": 0},
    }
    if stage == "meta":
        names = select_dynamic(model, cfg.meta.dynamic)
        params = dict(model.named_parameters())
        stats = GradStats({n: torch.ones_like(params[n]) for n in names}, tokens=1000)
        learner = build_rule(cfg.rule, names, stats)
        if learner_fn is not None:
            learner_fn(learner)
        payload.update(dynamic_names=names, grad_stats=stats.state_dict(),
                       meta_learner={k: v.detach().clone() for k, v in learner.state_dict().items()})
    save_checkpoint(payload, path)
    return path


def write_corpus(folder: Path, splits: dict) -> Path:
    """`splits`: name -> list of lines (WikiText layout, without newlines)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, lines in splits.items():
        (folder / f"{name}.txt").write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return folder


def article(title: str, *paragraphs: Sequence[str]) -> list:
    lines = [f" = {title} = ", " "]
    for words in paragraphs:
        lines += [" " + " ".join(words) + " ", " "]
    return lines


def leak_corpus(folder: Path, vocab: int = 300, seg_len: int = 5, seed: int = 0) -> Path:
    """Valid/test: an article of distinct words (each token a first occurrence), then one whose line repeats a
    pattern of `seg_len` words (each segment holds the tokens of the one before)."""
    rng = random.Random(seed)
    words = [f"w{i}" for i in range(vocab)]
    distinct = rng.sample(words, 250)
    pattern = rng.sample(words, seg_len)
    train = [" "] + article("Distinct", words, ["Periodic", "<unk>"]) + article("Periodic", rng.sample(words, vocab))
    held = [" "] + article("Distinct", distinct) + article("Periodic", pattern * 40)
    return write_corpus(folder, {"train": train, "valid": held, "test": held})
