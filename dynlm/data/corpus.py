"""Assemble a corpus: read the split texts, build or restore the tokenizer, encode every split."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

from .errors import DataError
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
    checksums: dict[str, str]  # every split read (train too when it built the tokenizer) -> sha256
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
    """
    splits = check_split_names(splits)
    if tokenizer is None and cfg.tokenizer not in TOKENIZERS:
        raise DataError(f"unknown data.tokenizer={cfg.tokenizer!r}: use one of {list(TOKENIZERS)}")
    to_read = splits if tokenizer is not None or "train" in splits else ("train",) + splits
    if cfg.dir:
        texts = read_local(cfg.dir, to_read)
        source = str(Path(cfg.dir).expanduser().resolve())
    else:
        texts = read_hub(cfg.hub_config, to_read)
        source = f"hub:{HUB_DATASET}/{cfg.hub_config}"

    path = None
    if tokenizer is None:
        tokenizer, path = build_tokenizer(cfg, texts["train"])
    out = {}
    for s in splits:
        try:
            out[s] = build_split(s, texts[s].lines, tokenizer)
        except DataError as e:
            raise DataError(f"{texts[s].origin}: {e}") from None
    return Corpus(tokenizer, out, {s: t.sha256 for s, t in texts.items()}, source, path)
