"""Assemble a corpus: read the split texts, build or restore the tokenizer, encode every split."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

from .errors import DataError
from .holdout import HELDOUT, KEY, hold_out
from .sources import HUB_DATASET, SplitText, check_split_names, read_hub, read_local
from .split import Split, build_split
from .tokenizer import Tokenizer
from .tokenizer_cache import load_or_train_sentencepiece
from .vocab import WordVocab

TOKENIZERS = ("word", "sentencepiece")


@dataclass(eq=False)  # tensor fields: compare by identity
class Corpus:
    tokenizer: Tokenizer
    splits: dict[str, Split]  # only the requested splits
    # every split read (train too when it built the tokenizer) -> sha256; with held-out articles, "train" is the
    # sha256 of the text stage 1 reads and "heldout" that of the held-out articles (`holdout.py`)
    checksums: dict[str, str]
    source: str  # absolute folder path, or "hub:<dataset>/<config>"
    # Where the SentencePiece model is cached (None for the word vocabulary or a given tokenizer).
    tokenizer_path: Optional[str] = field(default=None)


def build_tokenizer(cfg, train: SplitText) -> tuple[Tokenizer, Optional[str]]:
    if cfg.tokenizer == "word":
        return WordVocab.build(train.lines), None
    tok, path = load_or_train_sentencepiece(train.lines, train.sha256, cfg.vocab_size, cfg.dir, cfg.cache_dir)
    return tok, (str(path) if path else None)


def load_corpus(
    cfg, splits: Sequence[str] = ("train", "valid", "test"), tokenizer: Optional[Tokenizer] = None
) -> Corpus:
    """Load the splits named in `splits` as described by `cfg` (a DataConfig).

    The tokenizer is built from train (read even when not requested) unless one is given, e.g. the
    one restored from a checkpoint with `tokenizer_from_state_dict`, so evaluation reads only its split.
    With `cfg.meta_holdout_articles` = N > 0, "train" is the train text without its last N articles and
    "heldout" those N articles. The tokenizer is still built from the whole train text, so that ids are
    the same with and without a hold-out (WikiText's vocabulary is that of its whole train split).
    """
    splits = check_split_names(splits, derived=(HELDOUT,))
    if tokenizer is None and cfg.tokenizer not in TOKENIZERS:
        raise DataError(f"unknown data.tokenizer={cfg.tokenizer!r}: use one of {list(TOKENIZERS)}")
    held = int(getattr(cfg, "meta_holdout_articles", 0) or 0)  # a data config saved before the key existed: 0
    if HELDOUT in splits and not held:
        raise DataError(f"the {HELDOUT} split needs held-out articles: set {KEY}=N (N > 0) in stage 1")
    files = tuple(dict.fromkeys("train" if s == HELDOUT else s for s in splits))
    to_read = files if tokenizer is not None or "train" in files else ("train",) + files
    if cfg.dir:
        texts = read_local(cfg.dir, to_read)
        source = str(Path(cfg.dir).expanduser().resolve())
    else:
        texts = read_hub(cfg.hub_config, to_read)
        source = f"hub:{HUB_DATASET}/{cfg.hub_config}"

    path = None
    if tokenizer is None:
        tokenizer, path = build_tokenizer(cfg, texts["train"])
    if held and "train" in texts:
        texts["train"], texts[HELDOUT] = hold_out(texts["train"], held)
    out = {}
    for s in splits:
        try:
            out[s] = build_split(s, texts[s].lines, tokenizer)
        except DataError as e:
            raise DataError(f"{texts[s].origin}: {e}") from None
    return Corpus(tokenizer, out, {s: t.sha256 for s, t in texts.items()}, source, path)
