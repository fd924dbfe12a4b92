"""Rebuilding a trained LM from its checkpoint, and checking it against the data it is used with."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Tuple

import torch
from omegaconf import OmegaConf

from ..model import AWDLSTM, build_model
from .checkpoint import CheckpointError, load_checkpoint, load_weights


def load_lm(path: str | Path, device: torch.device) -> Tuple[AWDLSTM, Dict[str, Any]]:
    """The model described by the checkpoint's own config, with its evaluation weights loaded."""
    ckpt = load_checkpoint(path, map_location="cpu")
    model_cfg = OmegaConf.create(ckpt["config"]["model"])
    vocab = _vocab_size(ckpt)
    model = build_model(model_cfg, vocab)
    load_weights(model, ckpt["model"], source=f"checkpoint {path}")
    return model.to(device), ckpt


def _vocab_size(ckpt: Dict[str, Any]) -> int:
    return int(ckpt["model"]["embedding.weight"].shape[0])


def check_data_matches(ckpt: Dict[str, Any], corpus, path: str | Path) -> None:
    """The checkpoint's tokenizer must be the corpus's: same vocabulary, same ids."""
    vocab = _vocab_size(ckpt)
    if vocab != corpus.tokenizer.vocab_size:
        raise CheckpointError(
            f"checkpoint {path} has a vocabulary of {vocab} but the data gives {corpus.tokenizer.vocab_size} "
            f"(data.tokenizer={corpus.tokenizer.kind}). Use the data settings it was trained with: "
            f"{ckpt['config'].get('data')}"
        )
    if ckpt.get("tokenizer") is not None and not _same_tokenizer(ckpt["tokenizer"], corpus.tokenizer.state_dict()):
        raise CheckpointError(
            f"checkpoint {path} was trained with a different vocabulary (same size, different ids) than the data "
            f"at {corpus.source}. Use the data it was trained with: {ckpt['config'].get('data')}"
        )


def _same_tokenizer(a: Any, b: Any) -> bool:
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same_tokenizer(a[k], b[k]) for k in a)
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return torch.equal(torch.as_tensor(a), torch.as_tensor(b))
    return a == b


__all__ = ["load_lm", "check_data_matches", "CheckpointError"]
