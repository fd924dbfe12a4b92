"""What the model, trainer and evaluator may ask of a tokenizer (restoring one: `tokenizer_state.py`)."""
from __future__ import annotations

from typing import Any, Iterable, Protocol, Sequence, runtime_checkable

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
    def from_state_dict(cls, state: dict[str, Any]) -> Tokenizer: ...


def as_int_list(ids: Iterable[int]) -> list[int]:
    return ids.tolist() if hasattr(ids, "tolist") else [int(i) for i in ids]
