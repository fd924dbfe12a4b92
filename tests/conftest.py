"""Shared fixtures: the real WikiText-2 folder (skipped when absent), small writable copies, a toy corpus."""
from __future__ import annotations

import os
import random
from pathlib import Path

import pytest
import torch

# Tiny test models gain nothing from intra-op threads, and on a shared 2-core machine oversubscribed
# OpenMP threads spin against each other: one thread per test process unless asked otherwise.
torch.set_num_threads(int(os.environ.get("DYNLM_TEST_THREADS", "1")))
# No test may reach the wandb servers: offline unless the caller chose a mode.
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory):
    """Tokenizer models and gradient statistics cached by tests stay out of the user's ~/.cache/dynlm."""
    if "DYNLM_CACHE" not in os.environ:
        os.environ["DYNLM_CACHE"] = str(tmp_path_factory.mktemp("dynlm-cache"))
    yield

REPO_ROOT = Path(__file__).resolve().parents[1]
SPLIT_FILES = ("train.txt", "valid.txt", "test.txt")


@pytest.fixture(scope="session")
def wikitext2_dir() -> Path:
    """The tokenized WikiText-2 folder: $DYNLM_WIKITEXT2, else ../shared/data/wikitext-2 next to the repo."""
    folder = Path(os.environ.get("DYNLM_WIKITEXT2", REPO_ROOT.parent / "shared" / "data" / "wikitext-2"))
    if not all((folder / f).is_file() for f in SPLIT_FILES):
        pytest.skip(f"WikiText-2 not found at {folder} (set DYNLM_WIKITEXT2)")
    return folder


@pytest.fixture(scope="session")
def wikitext2_corpus(wikitext2_dir):
    """Full word-level WikiText-2, loaded once per session (about a second)."""
    from dynlm.config import DataConfig
    from dynlm.data import load_corpus

    return load_corpus(DataConfig(dir=str(wikitext2_dir)))


def write_slice(src: Path, dst: Path, lines_per_split: dict[str, int]) -> Path:
    dst.mkdir(parents=True, exist_ok=True)
    for split, n in lines_per_split.items():
        with open(src / f"{split}.txt", encoding="utf-8", newline="") as f:
            head = [next(f) for _ in range(n)]
        (dst / f"{split}.txt").write_text("".join(head), encoding="utf-8", newline="")
    return dst


@pytest.fixture(scope="session")
def lm_checkpoint(wikitext2_dir, tmp_path_factory):
    """`(data folder, stage-1 checkpoint)`: a 30-step tiny LM on a slice of WikiText-2, for the stage-2 tests."""
    from hydra_helpers import train_tiny_lm

    data = write_slice(wikitext2_dir, tmp_path_factory.mktemp("data") / "wt2",
                       {"train": 3000, "valid": 400, "test": 400})
    ckpt = train_tiny_lm(data, tmp_path_factory.mktemp("lm"), **{"trainer.max_steps": 30, "trainer.eval_interval": 30})
    return data, ckpt


@pytest.fixture
def wikitext2_slice_dir(wikitext2_dir, tmp_path) -> Path:
    """A fresh writable folder with the first lines of each real split (a few articles each)."""
    return write_slice(wikitext2_dir, tmp_path / "wt2-slice", {"train": 3000, "valid": 400, "test": 400})


def toy_lines(rng: random.Random, split: str, num_articles: int, vocab: list[str]) -> list[str]:
    lines = [" "]
    for a in range(num_articles):
        lines += [f" = {split.capitalize()} article {a} = ", " "]
        for p in range(rng.randint(2, 4)):
            if p:
                lines += [f" = = Section {p} = = ", " "]
            words = [rng.choice(vocab) for _ in range(rng.randint(20, 120))]
            lines += [" " + " ".join(words) + " ", " "]
    return lines


@pytest.fixture(scope="session")
def toy_data_dir(tmp_path_factory) -> Path:
    """A tiny synthetic corpus in the WikiText layout (titles, sections, blank lines, <unk>).

    Always available (no real data needed): 12 / 3 / 3 articles, a 50-word vocabulary.
    """
    rng = random.Random(0)
    vocab = [f"w{i}" for i in range(49)] + ["<unk>"]
    folder = tmp_path_factory.mktemp("toy-data")
    for split, n in (("train", 12), ("valid", 3), ("test", 3)):
        text = "".join(line + "\n" for line in toy_lines(rng, split, n, vocab))
        (folder / f"{split}.txt").write_text(text, encoding="utf-8", newline="")
    return folder
