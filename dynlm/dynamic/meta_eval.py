"""A quick adaptive validation during meta-training: static, dyneval and meta on the first valid articles."""
from __future__ import annotations

import math
from typing import Dict

from ..eval.adaptive import adaptive_token_nll
from ..eval.static import static_token_nll
from .rules import build_rule


def quick_adaptive_valid(model, learner, stats, names, corpus, cfg) -> Dict[str, float]:
    split = corpus.splits["valid"]
    n_art = min(cfg.meta.valid_articles, split.num_articles)
    end = int(split.article_starts[n_art]) if n_art < split.num_articles else split.ids.numel()
    if cfg.meta.valid_max_tokens is not None:
        end = min(end, cfg.meta.valid_max_tokens)
    ids = split.ids[:end]
    eos, seg = corpus.tokenizer.eos_id, cfg.meta.seg_len
    device = next(model.parameters()).device
    dyneval = build_rule(cfg.meta, names, stats, name="dyneval").to(device)
    results = {
        "static": static_token_nll(model, ids, eos, cfg.data.eval_bptt),
        "dyneval": adaptive_token_nll(model, dyneval, names, ids, eos, seg),
        "meta": adaptive_token_nll(model, learner, names, ids, eos, seg),
    }
    metrics: Dict[str, float] = {"valid/tokens": float(ids.numel())}
    for method, nll in results.items():
        loss = float(nll.double().mean())
        metrics[f"valid/{method}/loss"] = loss
        metrics[f"valid/{method}/ppl"] = math.exp(loss)
    return metrics
