"""Checkpoints: plain dicts of tensors, numbers, strings and a JSON-able config, never pickled modules.

Written atomically (temporary file in the same folder, fsync, rename) so a kill at any moment leaves
either the previous checkpoint or the new one, never a torn file. Loaded with `weights_only=True`, after the
zip CRC of every member is checked: `torch.load` does not check them, and reads damaged bytes as weights.
"""
from __future__ import annotations

import errno
import os
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Dict, Iterable, Mapping, Optional, Tuple

import torch

from ..config import DynlmError
from ..dynamic.rules import upgrade_config

FORMAT = "dynlm-checkpoint-v1"


class CheckpointError(DynlmError, ValueError):
    """A checkpoint that is missing, unreadable, or does not match the model or data."""


class CheckpointWriteError(DynlmError, RuntimeError):
    """A checkpoint that could not be written (a full disk, a folder without write permission)."""


def save_checkpoint(payload: Mapping[str, Any], path: str | os.PathLike) -> Path:
    path = Path(path)
    tmp = None
    try:  # every step that touches the disk: any failure leaves the previous checkpoint as it was
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as f:
            torch.save({"format": FORMAT, **payload}, f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes it 0600; a checkpoint gets the usual file mode
        os.replace(tmp, path)
    except (OSError, RuntimeError) as e:
        _remove(tmp)
        cause, fix = _cause_and_fix(e, path.parent)
        before = f"The previous {path} is intact" if path.is_file() else f"No {path} was written before"
        raise CheckpointWriteError(
            f"could not write the checkpoint {path} ({e}; {cause}). {before}: the write went to a temporary file, "
            f"now removed. {fix}, then resume with trainer.resume=true in the same run folder (or "
            f"trainer.resume=<a checkpoint>)."
        ) from e
    except BaseException:
        _remove(tmp)
        raise
    return path


def _cause_and_fix(e: BaseException, folder: Path) -> Tuple[str, str]:
    """A write error's likely cause, and what to do, in the user's words."""
    if isinstance(e, OSError) and e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return "no permission to write there", f"Make {folder} writable"
    if isinstance(e, OSError) and e.errno not in (errno.ENOSPC, errno.EDQUOT):
        return f"is {folder} a folder you may write?", f"Make {folder} a writable folder"
    return "is the disk full?", "Free some space"  # a full disk reaches torch.save as "unexpected pos ..."


def _remove(tmp: str | None) -> None:
    if tmp is not None and os.path.exists(tmp):
        os.unlink(tmp)


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _read_umask()  # read once, at import: flipping it later would race with other threads creating files


def remove_stale_temporaries(folder: Path) -> list:
    """Delete the temporary files that a write killed before its rename left in `folder` (`.<name>.*.tmp`);
    returns their paths. Only a run's own process writes its folder, so none of them is still being written."""
    stale = sorted(Path(folder).glob(".*.pt.*.tmp"))
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


def load_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> Dict[str, Any]:
    path = Path(path)
    fix = "Pass the path of a .pt file written by scripts/train.py (e.g. runs/.../checkpoints/best.pt)."
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}. {fix}")
    damage = checkpoint_damage(path)
    if damage is not None:
        raise CheckpointError(f"{path} is {damage}: it changed after dynlm wrote it (a bad disk, an interrupted "
                              f"copy), so its weights cannot be trusted. {_instead_of(path)}")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure means the same thing to a user
        # torch's own message ("101" for a text file) says nothing to a user: say what the file is instead
        raise CheckpointError(f"{path} is not a dynlm checkpoint: it is {_file_kind(path)}. {fix}") from e
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a dynlm checkpoint: it is a PyTorch file without dynlm's format tag "
                              f"{FORMAT!r}. {fix}")
    if isinstance(ckpt.get("config"), dict):  # one written before a key was renamed reads as today's
        ckpt["config"] = upgrade_config(ckpt["config"])
    return ckpt


ZIP_MAGIC = b"PK\x03\x04"  # torch.save writes a zip archive; other files are told apart by `_file_kind`


def checkpoint_damage(path: Path) -> Optional[str]:
    """What is wrong with the bytes of a zip checkpoint ("corrupt: ...", "truncated ..."), or None when every
    member passes its CRC check. Reads the whole file once. A file that is not a zip archive is not judged here."""
    with open(path, "rb") as f:
        if f.read(len(ZIP_MAGIC)) != ZIP_MAGIC:
            return None
    try:
        with zipfile.ZipFile(path) as z:
            bad = z.testzip()
    except (zipfile.BadZipFile, EOFError, OSError, ValueError):
        return "truncated or corrupt (a zip archive whose directory cannot be read)"
    return None if bad is None else f"corrupt (its member {bad} fails its CRC check)"


def intact_checkpoint(candidates: Iterable[Optional[Path]]) -> Optional[Path]:
    """The first of `candidates` that exists and whose bytes pass `checkpoint_damage`, or None."""
    for path in candidates:
        if path is not None and Path(path).is_file() and checkpoint_damage(Path(path)) is None:
            return Path(path)
    return None


def _instead_of(path: Path) -> str:
    """What to use instead of a damaged checkpoint: its intact sibling (last.pt <-> best.pt), else a fresh start."""
    sibling = {"last.pt": "best.pt", "best.pt": "last.pt"}.get(path.name)
    other = intact_checkpoint([path.with_name(sibling)] if sibling else [])
    if other is not None:
        return (f"{other} is intact: use it instead (trainer.resume={other} to resume, checkpoint={other} to "
                "evaluate), or copy the file again from a good copy.")
    return ("Copy it again from a good copy, or start the run again with trainer.overwrite=true (no intact "
            "last.pt or best.pt is next to it).")


def _file_kind(path: Path) -> str:
    """What a file that torch cannot load looks like, from its first bytes."""
    with open(path, "rb") as f:
        head = f.read(256)
    if not head:
        return "an empty file"
    if head.startswith(ZIP_MAGIC):
        return "a zip archive that is not a PyTorch file"
    text = head.decode("utf-8", errors="replace")
    if "\x00" not in text and text.count("\ufffd") <= 1:  # one: a character cut at byte 256
        first = (text.strip().splitlines() or [""])[0][:60]
        return f"a text file (it starts with {first!r})"
    return "a binary file that PyTorch cannot read (a torn copy, or another program's file?)"


def load_weights(model: torch.nn.Module, weights: Mapping[str, torch.Tensor], source: str = "checkpoint") -> None:
    """Load a state dict, turning a size or name mismatch into one readable error."""
    own = dict(model.named_parameters())
    missing = sorted(set(own) - set(weights))
    unexpected = sorted(set(weights) - set(own))
    wrong = [
        f"{n}: {tuple(weights[n].shape)} in {source} vs {tuple(p.shape)} in the model"
        for n, p in own.items()
        if n in weights and weights[n].shape != p.shape
    ]
    if missing or unexpected or wrong:
        lines = []
        if missing:
            lines.append(f"missing: {missing}")
        if unexpected:
            lines.append(f"unexpected: {unexpected}")
        lines += wrong
        raise CheckpointError(
            f"the {source} does not match the model built from the config ("
            + "; ".join(lines)
            + "). Use the model/data config the checkpoint was trained with (it is stored in the checkpoint)."
        )
    with torch.no_grad():
        for n, p in own.items():
            p.copy_(weights[n])


def capture_rng() -> Dict[str, Any]:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: Mapping[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
