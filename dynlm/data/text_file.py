"""A text file of one's own as a split (`scripts/evaluate.py text=PATH`), read with a checkpoint's tokenizer.

One article, or one per `= Title =` header (`header_line_starts`). Every line ends with `<eos>`, as in WikiText.
The word vocabulary splits on whitespace and reads a word it does not know as `<unk>`: `unknown_words` counts
them, so that a user learns how much of the text the model could not see (WikiText's tokenization separates
punctuation: ` , ` ` . ` ` @-@ `). SentencePiece reads any text as it was trained (byte fallback: nothing unknown).
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from .articles import header_line_starts
from .errors import DataError
from .sources import read_split_file
from .split import Split, build_split, words_per_article
from .tokenizer import Tokenizer
from .vocab import UNK

TEXT = "text"  # the split name of a text file


@dataclass(eq=False)  # tensor fields: compare by identity
class TextFile:
    path: Path
    sha256: str
    split: Split
    words: list[int]  # words of every article (whitespace words + one <eos> per line, as Split.num_words)
    unknown: Counter  # word -> occurrences, for the words the tokenizer reads as <unk>
    num_lines: int

    @property
    def num_words(self) -> int:
        """Whitespace words of the text (no <eos>)."""
        return sum(self.words) - self.num_lines


def unknown_words(tokenizer: Tokenizer, lines: Sequence[str]) -> Counter:
    """The words of `lines` a word vocabulary does not have (read as `<unk>`); none for SentencePiece."""
    stoi = getattr(tokenizer, "stoi", None)
    if tokenizer.kind != "word" or stoi is None:
        return Counter()
    return Counter(w for line in lines for w in line.split() if w not in stoi)


def read_text_file(path: str | Path, tokenizer: Tokenizer) -> TextFile:
    """The UTF-8 file at `path` as a split named `text`, encoded by `tokenizer`."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"text={path}: no such file. Fix: pass text=PATH of a UTF-8 text file")
    if path.stat().st_size == 0:
        raise DataError(f"text={path} is empty. Fix: pass a file with the text to evaluate")
    text = read_split_file(path)
    unknown = unknown_words(tokenizer, text.lines)
    if unknown and getattr(tokenizer, "unk_id", 0) is None:
        word, _ = unknown.most_common(1)[0]
        raise DataError(f"text={path}: {len(unknown)} word(s), e.g. {word!r}, are not in the checkpoint's vocabulary, "
                        f"which has no {UNK} to read them as. Fix: remove them, or evaluate a sentencepiece checkpoint")
    starts, titles = header_line_starts(text.lines, untitled=path.name)
    split = build_split(TEXT, text.lines, tokenizer, (starts, titles))
    return TextFile(path.resolve(), text.sha256, split, words_per_article(text.lines, starts), unknown,
                    len(text.lines))


__all__ = ["TEXT", "TextFile", "read_text_file", "unknown_words"]
