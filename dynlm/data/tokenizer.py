"""What the model, trainer and evaluator may ask of a tokenizer, and how to restore one from a checkpoint."""
from __future__ import annotations

from typing import Any, Iterable, Protocol, Sequence, runtime_checkable

from .errors import DataError

EOS = "<eos>"


@runtime_checkable
class Tokenizer(Protocol):
    kind: str  # "word" | "sentencepiece"

    @property
    def vocab_size(self) -> int: ...

    @property
    def eos_id(self) -> int: ...

    def encode_line(self, line: str) -> list[int]:
        """Token ids of one line, ending with eos_id."""
        ...

    def encode_lines(self, lines: Sequence[str]) -> list[list[int]]:
        """encode_line for many lines (batched where the backend allows)."""
        ...

    def decode(self, ids: Iterable[int]) -> list[str]:
        """One string (word or piece) per id."""
        ...

    def id_to_token(self, i: int) -> str: ...

    def state_dict(self) -> dict[str, Any]:
        """Plain data (str, list, bytes) for a checkpoint; loads with torch.load(weights_only=True)."""
        ...

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> "Tokenizer": ...


def tokenizer_from_state_dict(state: dict[str, Any]) -> Tokenizer:
    """Rebuild whichever tokenizer wrote `state` (it records its kind)."""
    from .sentencepiece_tokenizer import SentencePieceTokenizer
    from .vocab import WordVocab

    kinds = {WordVocab.kind: WordVocab, SentencePieceTokenizer.kind: SentencePieceTokenizer}
    kind = state.get("kind")
    if kind not in kinds:
        raise DataError(f"tokenizer state of unknown kind {kind!r}: expected one of {sorted(kinds)}")
    return kinds[kind].from_state_dict(state)


def as_int_list(ids: Iterable[int]) -> list[int]:
    return ids.tolist() if hasattr(ids, "tolist") else [int(i) for i in ids]
