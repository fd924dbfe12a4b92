"""Raw split text: a list of lines per split, from a local folder or the Hugging Face hub.

Lines keep the WikiText layout (" tok tok ... tok " or " " for a blank line), without their "\n".
Every line counts: blank lines carry an <eos> token and mark article boundaries.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from .errors import DataError

SPLITS = ("train", "valid", "test")
# File names tried in a local folder, in this order ({} is the split name).
FILE_PATTERNS = ("{}.txt", "wiki.{}.tokens", "wiki.{}.raw")
# The canonical hub id of WikiText (the bare "wikitext" name is a redirect to it).
HUB_DATASET = "Salesforce/wikitext"
HUB_SPLIT = {"train": "train", "valid": "validation", "test": "test"}
FIX_LOCAL = "pass data.dir=PATH to a local folder with train.txt/valid.txt/test.txt"


@dataclass
class SplitText:
    lines: list[str]
    sha256: str  # of the file bytes (local) or of the normalised lines, each + "\n" (hub)
    origin: str  # file path or hub address, for messages


def check_split_names(splits: Iterable[str], derived: Sequence[str] = ()) -> tuple[str, ...]:
    """`splits` as a tuple, each one of SPLITS or of the `derived` names (splits cut from those files)."""
    splits, known = tuple(splits), SPLITS + tuple(derived)
    bad = [s for s in splits if s not in known]
    if bad or not splits:
        raise DataError(f"unknown split name(s) {bad or list(splits)}: use some of {list(known)}")
    return splits


def find_split_file(folder: Path, split: str) -> Path:
    names = [p.format(split) for p in FILE_PATTERNS]
    for name in names:
        if (folder / name).is_file():
            return folder / name
    raise DataError(
        f"data folder {folder} has no {split} split: looked for {', '.join(names)}. "
        f"Fix: add one of these files, or {FIX_LOCAL}"
    )


def decode_lines(data: bytes, origin: str) -> list[str]:
    """UTF-8 bytes -> lines, split on "\n" only.

    Why not `datasets.load_dataset("text", ...)`: its text builder opens files in universal-newline
    mode, so a lone "\r" inside a line would split it (the line count would drift from the token
    count), and it writes an Arrow cache. We need the bytes anyway (checksum, byte offset of a bad
    byte), and plain Python reads WikiText-2 in well under a second.
    """
    if not data:
        raise DataError(f"{origin} is empty. Fix: point data.dir at a folder whose split files hold the text")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(
            f"{origin} is not valid UTF-8: byte 0x{data[e.start]:02x} at byte offset {e.start} ({e.reason}). "
            f"Fix: convert the file to UTF-8 (e.g. iconv -f latin1 -t utf-8)"
        ) from None
    text = text.removeprefix("\ufeff")  # a BOM is not a word
    lines = text.split("\n")
    if lines[-1] == "":  # the file ends with a newline: no extra line after it
        lines.pop()
    if "\r" in text:  # CRLF copies of WikiText exist upstream; the "\r" is not part of the line
        lines = [line.removesuffix("\r") for line in lines]
    return lines


def read_split_file(path: Path) -> SplitText:
    data = path.read_bytes()
    return SplitText(decode_lines(data, str(path)), hashlib.sha256(data).hexdigest(), str(path))


def read_local(folder: str | Path, splits: Sequence[str]) -> dict[str, SplitText]:
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        what = "is not a folder" if folder.exists() else "does not exist"
        raise DataError(
            f"data folder {folder} {what}. Fix: {FIX_LOCAL}, or leave data.dir unset to use the hub"
        )
    return {s: read_split_file(find_split_file(folder, s)) for s in splits}


def normalise_hub_rows(rows: Sequence[str]) -> list[str]:
    """HF wikitext rows are the file lines with their "\n" kept, and blank lines as "".

    Map them back to the file layout, so a hub split and the same split on disk give the same lines
    and the same checksum.
    """
    lines = [r[:-1] if r.endswith("\n") else r for r in rows]
    return [line if line else " " for line in lines]


def lines_sha256(lines: Sequence[str]) -> str:
    """sha256 of the lines written as a file (each line + "\n")."""
    h = hashlib.sha256()
    for line in lines:
        h.update(line.encode("utf-8"))
        h.update(b"\n")
    return h.hexdigest()


def read_hub(hub_config: str, splits: Sequence[str]) -> dict[str, SplitText]:
    address = f"{HUB_DATASET}/{hub_config}"
    try:
        import datasets

        ds = datasets.load_dataset(HUB_DATASET, hub_config)
    except Exception as e:  # offline, unknown config, auth... all have the same fix
        raise DataError(
            f"could not load {address} from the Hugging Face hub ({type(e).__name__}: {e}). Fix: {FIX_LOCAL}"
        ) from e
    out = {}
    for s in splits:
        if HUB_SPLIT[s] not in ds:
            raise DataError(f"{address} on the hub has no {HUB_SPLIT[s]!r} split. Fix: {FIX_LOCAL}")
        lines = normalise_hub_rows(ds[HUB_SPLIT[s]]["text"])
        if not lines:
            raise DataError(f"{address} split {HUB_SPLIT[s]!r} is empty. Fix: {FIX_LOCAL}")
        out[s] = SplitText(lines, lines_sha256(lines), f"hub:{address}:{HUB_SPLIT[s]}")
    return out
