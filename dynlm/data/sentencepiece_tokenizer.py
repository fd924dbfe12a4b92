"""SentencePiece subword tokenizer, trained on the train split.

Choices (fixed, so a cached model is reproducible):
- model_type "unigram" (Kudo 2018, SentencePiece's default): on WikiText-2 it trains in under a
  second on the sample below and encodes faster than BPE.
- byte_fallback: characters outside the vocabulary become UTF-8 byte pieces instead of one shared
  unknown piece, and normalization "identity" (no NFKC): every line round-trips to its words, and no
  probability mass hides in an <unk> catch-all.
- "▁<unk>" is a user-defined piece: the literal word "<unk>" of tokenized WikiText stays one id.
- <eos> is SentencePiece's eos (id 1), appended to every line; no bos, no pad.
- trained on a deterministic sample (every k-th non-blank line, about MAX_TRAIN_CHARS characters)
  with a fixed thread count, so training is quick even on WikiText-103 and gives the same model.
"""
from __future__ import annotations

import io
from typing import Any, Iterable, Sequence

import sentencepiece as spm

from .errors import DataError
from .tokenizer import EOS, as_int_list

MODEL_TYPE = "unigram"
MAX_TRAIN_CHARS = 2_000_000
TRAIN_THREADS = 4
ENCODE_THREADS = 4
SPM_UNK = "<spm_unk>"  # SentencePiece's own unknown piece: unused thanks to byte fallback
WORD_UNK = "\u2581<unk>"


def sample_lines(lines: Sequence[str], max_chars: int = MAX_TRAIN_CHARS) -> list[str]:
    """Every k-th non-blank line, k chosen so the sample holds about max_chars characters."""
    text_lines = [line for line in lines if line.strip()]
    total = sum(map(len, text_lines))
    step = max(1, -(-total // max_chars))
    return text_lines[::step]


def train_sentencepiece(lines: Sequence[str], vocab_size: int, model_type: str = MODEL_TYPE) -> bytes:
    """Train on (a sample of) `lines`; returns the serialized model proto."""
    sample = sample_lines(lines)
    if not sample:
        raise DataError("cannot train SentencePiece: the train split has no text")
    out = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(sample),
            model_writer=out,
            model_type=model_type,
            vocab_size=vocab_size,
            unk_id=0,
            unk_piece=SPM_UNK,
            eos_id=1,
            eos_piece=EOS,
            bos_id=-1,
            pad_id=-1,
            user_defined_symbols=[WORD_UNK],
            byte_fallback=True,
            normalization_rule_name="identity",  # no NFKC: the model reads exactly the corpus text
            input_sentence_size=0,  # we sampled already (deterministically)
            max_sentence_length=1 << 16,  # WikiText lines exceed the 4,192-byte default
            num_threads=TRAIN_THREADS,
            minloglevel=2,
        )
    except RuntimeError as e:  # e.g. "Vocabulary size too high" / "smaller than required_chars"
        raise DataError(
            f"SentencePiece training failed with vocab_size={vocab_size}: {e}. "
            f"Fix: choose another data.vocab_size (byte fallback alone needs 256 + the character set)"
        ) from None
    return out.getvalue()


class SentencePieceTokenizer:
    kind = "sentencepiece"

    def __init__(self, model_proto: bytes):
        self.model_proto = bytes(model_proto)
        self._sp = spm.SentencePieceProcessor(model_proto=self.model_proto)
        if self._sp.eos_id() < 0:
            raise DataError("SentencePiece model has no eos piece: retrain it with dynlm")

    @property
    def vocab_size(self) -> int:
        return self._sp.get_piece_size()

    @property
    def eos_id(self) -> int:
        return self._sp.eos_id()

    def encode_line(self, line: str) -> list[int]:
        return self._sp.encode(line) + [self.eos_id]

    def encode_lines(self, lines: Sequence[str]) -> list[list[int]]:
        eos = [self.eos_id]
        return [ids + eos for ids in self._sp.encode(list(lines), num_threads=ENCODE_THREADS)]

    def decode(self, ids: Iterable[int]) -> list[str]:
        return [self._sp.id_to_piece(i) for i in as_int_list(ids)]

    def id_to_token(self, i: int) -> str:
        return self._sp.id_to_piece(int(i))

    def decode_text(self, ids: Iterable[int]) -> str:
        """Detokenised text (pieces joined, "▁" -> space, byte pieces -> characters), eos dropped."""
        return self._sp.decode([i for i in as_int_list(ids) if i != self.eos_id])

    def state_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "model_proto": self.model_proto}

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> SentencePieceTokenizer:
        return cls(state["model_proto"])

    # The SWIG processor does not pickle; the proto does.
    def __getstate__(self):
        return {"model_proto": self.model_proto}

    def __setstate__(self, state):
        self.__init__(state["model_proto"])
