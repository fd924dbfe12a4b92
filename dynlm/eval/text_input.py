"""Evaluating a text file of one's own (`text=PATH`): the corpus evaluation reads, and what it says about the text.

The text is read with the checkpoint's own tokenizer (no training data needed), as the split `text`. Only dyneval
on a stage-1 checkpoint reads more: the train split the checkpoint was trained on, for its gradient statistics.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Tuple

from omegaconf import DictConfig

from .. import dist
from ..data import TEXT, Corpus, DataError, TextFile, load_corpus, read_text_file, tokenizer_from_state_dict
from ..run.checkpoint import CheckpointError

SHOWN_UNKNOWN = 10  # the most frequent unknown words named in results.json and the message


def load_text_corpus(text_path: str, ckpt: Dict[str, Any], ckpt_path: Path, data_cfg: DictConfig,
                     needs_train: bool) -> Tuple[Corpus, TextFile]:
    """The corpus of an evaluation of `text_path`: its split `text`, and `train` when `needs_train`."""
    if ckpt.get("tokenizer") is None:
        raise CheckpointError(f"{ckpt_path} holds no tokenizer to read text={text_path} with: evaluate a checkpoint "
                              "written by scripts/train.py")
    tokenizer = tokenizer_from_state_dict(ckpt["tokenizer"])
    text = read_text_file(text_path, tokenizer)
    splits, checksums = {TEXT: text.split}, {TEXT: text.sha256}
    if needs_train:
        try:
            train = load_corpus(data_cfg, splits=("train",), tokenizer=tokenizer)
        except DataError as e:
            raise DataError(f"dyneval on a stage-1 checkpoint measures gradient statistics on the train split it was "
                            f"trained on, which cannot be read ({e}); or evaluate with methods=[static]") from None
        splits["train"], checksums["train"] = train.splits["train"], train.checksums["train"]
        if checksums["train"] != (ckpt.get("data_checksums") or {}).get("train", checksums["train"]):
            dist.print0(f"note: the train split at {train.source} differs from the one the checkpoint was trained on "
                        "(other sha256); dyneval's gradient statistics are measured on it anyway")
    dist.print0(describe(text))
    return Corpus(tokenizer, splits, checksums, str(text.path)), text


def text_summary(text: TextFile) -> Dict[str, Any]:
    """What results.json says about the text file."""
    return {"path": str(text.path), "sha256": text.sha256, "lines": text.num_lines, "articles": text.split.num_articles,
            "tokens": text.split.num_tokens, "words": text.num_words, "unknown_words": sum(text.unknown.values()),
            "unknown_types": len(text.unknown),
            "most_frequent_unknown": [[w, n] for w, n in text.unknown.most_common(SHOWN_UNKNOWN)]}


def describe(text: TextFile) -> str:
    """One line: what was read, and how much of it the vocabulary does not know."""
    s = text.split
    line = f"text {text.path}: {s.num_tokens} tokens, {s.num_articles} article(s)"
    unknown = sum(text.unknown.values())
    if unknown:
        shown = ", ".join(w for w, _ in text.unknown.most_common(SHOWN_UNKNOWN))
        if len(text.unknown) > SHOWN_UNKNOWN:
            shown += ", ..."
        line += (f"; {unknown} of its {text.num_words} words ({100 * unknown / text.num_words:.1f}%) are not in the "
                 f"checkpoint's vocabulary and are read as <unk> ({shown}). A word vocabulary splits on spaces "
                 "only: tokenize the text as its training data was (WikiText: ` , ` ` . ` ` @-@ ` apart)")
    return line


__all__ = ["describe", "load_text_corpus", "text_summary"]
