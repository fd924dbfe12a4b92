"""A method whose perplexity becomes inf or NaN is named, with the article where it happened and what to change: its
perplexity alone ("inf") would not say whether the text, the weights or the step size is to blame."""
import math

import torch

from dynlm.eval.aggregate import article_rows, first_diverged_article
from dynlm.eval.evaluate import evaluate
from eval_helpers import compose_eval, leak_corpus, make_checkpoint, one_thread  # noqa: F401 (autouse fixture)


def test_the_first_article_with_an_infinite_or_nan_perplexity_is_named():
    def rows(*nll):  # one token per article
        return article_rows({"m": torch.tensor(nll)}, torch.arange(len(nll)), ["t"] * len(nll), [1] * len(nll))

    assert first_diverged_article(rows(1.0, 30.0, 2.0), "m") is None  # a bad token is not a divergence
    assert first_diverged_article(rows(1.0, 1e6, math.nan), "m") == 1  # exp(1e6) overflows
    assert first_diverged_article(rows(1.0, 2.0, math.nan), "m") == 2


def test_a_diverged_dyneval_is_reported_with_its_article_and_the_fix(tmp_path, capsys):
    data = leak_corpus(tmp_path / "data")
    ckpt = make_checkpoint(data, tmp_path / "lm.pt")
    common = [f"checkpoint={ckpt}", f"data.dir={data}", "split=valid", "methods=[static,dyneval]",
              "eval.progress_bar=false", "eval.gradstat_tokens=200", f"data.cache_dir={tmp_path / 'cache'}"]
    sane = evaluate(compose_eval(common), tmp_path / "sane")
    assert all(v["diverged_at_article"] is None for v in sane["methods"].values())
    assert "dyneval diverged" not in capsys.readouterr().out

    blown = evaluate(compose_eval([*common, "eval.dyneval_eta=1e12"]), tmp_path / "blown")
    assert blown["methods"]["static"]["diverged_at_article"] is None
    article = blown["methods"]["dyneval"]["diverged_at_article"]
    assert isinstance(article, int) and not math.isfinite(blown["articles"][article]["dyneval"]["ppl"])
    assert all(math.isfinite(r["dyneval"]["ppl"]) for r in blown["articles"][:article])
    out = capsys.readouterr().out
    assert f"dyneval diverged: its perplexity is not finite from article {article} on" in out
    assert "lower eval.dyneval_eta" in out
