"""Word-level vocabulary: whitespace words + <eos>, ids in first-occurrence order over train.

This is pytorch/examples' word_language_model `data.py` (and AWD-LSTM's), so ids and counts match
published WikiText numbers: 33,278 types on WikiText-2, <eos> = id 0 (train starts with a blank line).
"""
from __future__ import annotations

from itertools import chain
from typing import Any, Iterable, Optional, Sequence

from .errors import DataError
from .tokenizer import EOS, as_int_list

UNK = "<unk>"


def line_words(line: str) -> list[str]:
    return line.split() + [EOS]


class WordVocab:
    kind = "word"

    def __init__(self, tokens: Sequence[str]):
        self.itos: list[str] = list(tokens)
        self.stoi: dict[str, int] = {w: i for i, w in enumerate(self.itos)}
        if len(self.stoi) != len(self.itos):
            raise DataError("word vocabulary has duplicate tokens")
        if EOS not in self.stoi:
            raise DataError(f"word vocabulary has no {EOS} token")
        # Words never seen in train map to <unk> when the corpus has one (tokenized WikiText does).
        self.unk_id: Optional[int] = self.stoi.get(UNK)

    @classmethod
    def build(cls, lines: Iterable[str]) -> WordVocab:
        # dict.fromkeys keeps first-occurrence order and runs in C.
        return cls(list(dict.fromkeys(chain.from_iterable(map(line_words, lines)))))

    @property
    def vocab_size(self) -> int:
        return len(self.itos)

    @property
    def eos_id(self) -> int:
        return self.stoi[EOS]

    def encode_line(self, line: str) -> list[int]:
        words = line_words(line)
        try:
            return [self.stoi[w] for w in words]
        except KeyError as e:
            if self.unk_id is None:
                raise DataError(
                    f"word {e.args[0]!r} is not in the vocabulary built from train, and the vocabulary "
                    f"has no {UNK} token to map it to. Fix: use the tokenized WikiText (rare words already "
                    f"replaced by {UNK}), or data.tokenizer=sentencepiece"
                ) from None
            unk = self.unk_id
            return [self.stoi.get(w, unk) for w in words]

    def encode_lines(self, lines: Sequence[str]) -> list[list[int]]:
        return [self.encode_line(line) for line in lines]

    def decode(self, ids: Iterable[int]) -> list[str]:
        return [self.itos[i] for i in as_int_list(ids)]

    def id_to_token(self, i: int) -> str:
        return self.itos[int(i)]

    def state_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "tokens": list(self.itos)}

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> WordVocab:
        return cls(state["tokens"])
