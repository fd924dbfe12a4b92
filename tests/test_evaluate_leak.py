"""Adaptive evaluation scores every token before any update that has seen it (no peeking).

The set-up makes peeking pay: the only dynamic parameter is the decoder bias, the step size is large and old
updates decay fast (FLUSH), so an update on segment s makes segment s's own tokens far more likely than any
other. An evaluation that scored a segment after its own update would give first occurrences a loss far below
the static model's; an honest one gives them a loss above it (the mass went to the previous segment's tokens),
while repeated tokens become far cheaper.
"""
import math

import numpy as np
import pytest
import torch

from dynlm.dynamic.reading import primed_stream, read_stream
from dynlm.dynamic.reading_state import fresh_state
from dynlm.dynamic.rules import build_rule
from dynlm.dynamic.segment import adapt_segment, segment_losses
from dynlm.eval.evaluate import evaluate
from dynlm.eval.inputs import load_inputs
from dynlm.eval.methods import run_methods
from dynlm.model import static_weights
from eval_helpers import compose_eval, leak_corpus, make_checkpoint, one_thread  # noqa: F401 (autouse fixture)

SEG = 2
PEEK = ["meta.dynamic=[decoder_bias]", f"meta.seg_len={SEG}", "rule.eta=10", "rule.lam=0.49",
        "rule.update_gate_init=0.5", "rule.momentum=true"]


@pytest.fixture(scope="module")
def peek_setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("leak")
    data = leak_corpus(root / "data", seg_len=SEG)
    ckpt = make_checkpoint(data, root / "meta.pt", stage="meta", overrides=PEEK)
    return data, ckpt


def peeking_nll(model, rule, names, ids, eos, seg_len):
    """What a leaky evaluation would report: each segment scored with the weights updated on itself."""
    theta0 = static_weights(model, names)
    stream = primed_stream(ids, eos)
    state = fresh_state(model, theta0, 1, rule.init_learner_state({k: v.unsqueeze(0) for k, v in theta0.items()}))
    out = torch.empty(ids.numel())
    for a in range(0, ids.numel(), seg_len):
        b = min(a + seg_len, ids.numel())
        x, y = stream[a:b].unsqueeze(1), stream[a + 1 : b + 1].unsqueeze(1)
        _, _, new_state, _ = adapt_segment(model, rule, state, theta0, x, y)
        with torch.no_grad():
            _, nll, _ = segment_losses(model, new_state.fast, state.lm, x, y)
        out[a:b] = nll[:, 0]
        state = new_state
    return out


def _first_occurrence_mask(ids: torch.Tensor, article_id: torch.Tensor, article: int, tok) -> torch.Tensor:
    words = torch.tensor([tok.id_to_token(int(i)).startswith("w") for i in ids])
    return words & (article_id == article)


def test_dyneval_and_meta_score_tokens_before_updating_on_them(peek_setup, tmp_path):
    data, ckpt = peek_setup
    cfg = compose_eval([f"checkpoint={ckpt}", "split=valid", "eval.progress_bar=false", "eval.html_articles=[0]"])
    results = evaluate(cfg, tmp_path / "eval")
    z = np.load(tmp_path / "eval" / "token_losses.npz")
    prep = load_inputs(cfg)
    tok = prep.corpus.tokenizer
    ids = torch.from_numpy(z["token_id"])
    art = torch.from_numpy(z["article_id"])
    distinct = _first_occurrence_mask(ids, art, 0, tok)
    periodic = _first_occurrence_mask(ids, art, 1, tok)
    assert int(distinct.sum()) == 250 and len(set(ids[distinct].tolist())) == 250  # every one a first occurrence
    static = torch.from_numpy(z["static"])

    # the detector works: a peeking reader would make first occurrences far cheaper than the static model
    dyneval_rule = build_rule(prep.fixed_rules["dyneval"], prep.names, prep.stats)
    for rule in (dyneval_rule, prep.learner):
        peek = peeking_nll(prep.model, rule, prep.names, prep.ids, tok.eos_id, SEG)
        assert float(peek[distinct].mean()) < float(static[distinct].mean()) - 3.0

    for method in ("dyneval", "learned"):
        honest = torch.from_numpy(z[method])
        # no leak: first occurrences cost at least what they cost the static model (here much more) ...
        assert float(honest[distinct].mean()) > float(static[distinct].mean()) + 0.3, method
        # ... while the adaptation is real: repeated tokens become far cheaper
        assert float(honest[periodic][SEG * 4 :].mean()) < float(static[periodic].mean()) - 2.5, method
        assert math.isfinite(results["methods"][method]["ppl"])


def test_reset_per_article_reads_each_article_as_if_alone(peek_setup):
    """The runner's reset mode starts every article from θ0: article 1 then reads as if it were alone."""
    data, ckpt = peek_setup
    cfg = compose_eval([f"checkpoint={ckpt}", "split=valid", "eval.progress_bar=false", "eval.reset_per_article=true",
                        "methods=[dyneval]"])
    prep = load_inputs(cfg)
    losses, _ = run_methods(prep, reset_per_article=True, progress_bar=False)
    start = int(prep.article_starts[1])
    rule = build_rule(prep.fixed_rules["dyneval"], prep.names, prep.stats)
    ref = read_stream(prep.model, prep.ids[start:], prep.corpus.tokenizer.eos_id, SEG, rule=rule, names=prep.names)
    torch.testing.assert_close(losses["dyneval"][start:], ref, rtol=1e-5, atol=1e-5)
    for n, p in prep.model.named_parameters():  # the static weights in memory are still the checkpoint's
        assert torch.equal(p.detach(), prep.ckpt["model"][n]) and p.grad is None, n
