"""Where a trained SentencePiece model is cached, and load-or-train.

File name: spm-<type>-<vocab_size>-<key>.model, key = hash of (train split sha256, model type, vocab
size, trainer settings), so another vocabulary size, another corpus or changed settings retrain
instead of silently reusing a stale model. Looked up next to the data first (the model belongs to
the data), then in cfg.cache_dir, $DYNLM_CACHE or ~/.cache/dynlm. Written next to the data only if that folder is
writable *and* not marked read-only by its permission bits (root can write anywhere; a 0555 shared
data folder should stay clean).
"""
from __future__ import annotations

import hashlib
import logging
import os
import stat
from pathlib import Path
from typing import Optional

from ..cache import cache_root, write_atomic
from .sentencepiece_tokenizer import MAX_TRAIN_CHARS, MODEL_TYPE, SentencePieceTokenizer, train_sentencepiece

log = logging.getLogger(__name__)
TRAINER_VERSION = 1  # bump when train_sentencepiece changes its output


def model_file_name(train_sha256: str, vocab_size: int, model_type: str = MODEL_TYPE) -> str:
    key = f"{train_sha256}|{model_type}|{vocab_size}|{MAX_TRAIN_CHARS}|v{TRAINER_VERSION}"
    return f"spm-{model_type}-{vocab_size}-{hashlib.sha256(key.encode()).hexdigest()[:10]}.model"


def is_writable_dir(folder: Path) -> bool:
    try:
        mode = os.stat(folder).st_mode
    except OSError:
        return False
    write_bits = stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH
    return stat.S_ISDIR(mode) and bool(mode & write_bits) and os.access(folder, os.W_OK)


def cache_folders(data_dir: Optional[str], cache_dir: Optional[str]) -> list[Path]:
    folders = [Path(data_dir).expanduser()] if data_dir else []
    return folders + [cache_root(cache_dir)]


def load_or_train_sentencepiece(
    train_lines: list[str],
    train_sha256: str,
    vocab_size: int,
    data_dir: Optional[str] = None,
    cache_dir: Optional[str] = None,
) -> tuple[SentencePieceTokenizer, Optional[Path]]:
    """(tokenizer, path of the cached model, None if it could not be written anywhere)."""
    name = model_file_name(train_sha256, vocab_size)
    folders = cache_folders(data_dir, cache_dir)
    for folder in folders:
        if (folder / name).is_file():
            return SentencePieceTokenizer((folder / name).read_bytes()), folder / name
    proto = train_sentencepiece(train_lines, vocab_size)
    for i, folder in enumerate(folders):
        # The data folder must exist already and be writable; the cache folder may be created.
        if i < len(folders) - 1 and not is_writable_dir(folder):
            continue
        try:
            write_atomic(folder / name, proto)
            return SentencePieceTokenizer(proto), folder / name
        except OSError as e:
            log.warning("could not cache the SentencePiece model in %s: %s", folder, e)
    return SentencePieceTokenizer(proto), None
