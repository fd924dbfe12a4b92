"""The long-term memory: the static weights θ0, learned on the whole corpus by stage 1.

They are the model's own parameters. Everything that adapts (dynamic evaluation, the meta-learner) reads
them through `static_weights` and never writes them: the medium-term copies live beside them, per stream.
"""
from __future__ import annotations

from typing import Dict, Sequence

from torch import Tensor, nn


def static_weights(model: nn.Module, names: Sequence[str]) -> Dict[str, Tensor]:
    """θ0 for the named parameters: the parameters themselves (no copy), so a tied tensor stays one tensor."""
    params = dict(model.named_parameters())
    return {n: params[n] for n in names}


__all__ = ["static_weights"]
