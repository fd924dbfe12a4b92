"""Restoring whichever tokenizer wrote a checkpoint's tokenizer state (it records its kind)."""
from __future__ import annotations

from typing import Any

from .errors import DataError
from .sentencepiece_tokenizer import SentencePieceTokenizer
from .tokenizer import Tokenizer
from .vocab import WordVocab

KINDS = {WordVocab.kind: WordVocab, SentencePieceTokenizer.kind: SentencePieceTokenizer}


def tokenizer_from_state_dict(state: dict[str, Any]) -> Tokenizer:
    kind = state.get("kind")
    if kind not in KINDS:
        raise DataError(f"tokenizer state of unknown kind {kind!r}: expected one of {sorted(KINDS)}")
    return KINDS[kind].from_state_dict(state)


__all__ = ["tokenizer_from_state_dict"]
