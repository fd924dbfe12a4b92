"""Report arithmetic (pure functions), the count identities on the real WikiText-2 test split, HTML pages, and
the validation article followed during meta-training."""
import json
import math
from types import SimpleNamespace

import pytest
import torch

from dynlm.data.sources import read_local
from dynlm.eval.aggregate import (
    article_rows,
    article_totals,
    article_word_counts,
    method_totals,
    moving_average,
    perplexity,
    pick_extreme_articles,
    position_bins,
    relative_position,
)
from dynlm.eval.html import article_page, gain_color
from dynlm.run.dashboard import chunk_means
from dynlm.run.jsonl import read_jsonl
from dynlm.train.meta_validation import CURVES_FILE, follow_article


def test_counts_add_up_on_the_real_test_split(wikitext2_corpus, wikitext2_dir):
    """Without a model: the per-article counts of the whole test split give its 245,569 tokens."""
    split = wikitext2_corpus.splits["test"]
    assert split.num_tokens == 245_569 and split.num_articles == 60
    nll = torch.rand(split.num_tokens, generator=torch.Generator().manual_seed(0)) * 10
    tokens, sums = article_totals(nll, split.article_id, split.num_articles)
    assert int(tokens.sum()) == 245_569 and torch.equal(tokens, split.article_lengths)
    assert math.isclose(float(sums.sum()), float(nll.double().sum()), rel_tol=1e-12)
    words = article_word_counts(read_local(wikitext2_dir, ("test",))["test"].lines)
    assert len(words) == 60 and sum(words) == split.num_words == 245_569  # word level: a word is a token
    rel = relative_position(split.position, split.article_id, split.article_lengths)
    assert float(rel.min()) == 0.0 and float(rel.max()) < 1.0
    mean, count = position_bins(nll, rel, 20)
    assert int(count.sum()) == 245_569
    assert math.isclose(float((mean * count).sum()), float(nll.double().sum()), rel_tol=1e-9)
    rows = article_rows({"static": nll}, split.article_id, split.titles, words)
    assert sum(r["tokens"] for r in rows) == 245_569 and rows[0]["title"] == split.titles[0]


def test_perplexity_is_from_sums_not_a_mean_of_article_perplexities():
    nll = torch.tensor([1.0, 1.0, 1.0, 4.0])  # article 0: three tokens, article 1: one
    art = torch.tensor([0, 0, 0, 1])
    rows = article_rows({"static": nll}, art, ["a", "b"], [3, 1])
    assert [r["tokens"] for r in rows] == [3, 1]
    assert math.isclose(rows[0]["static"]["ppl"], math.e) and math.isclose(rows[1]["static"]["ppl"], math.e ** 4)
    total = method_totals(nll, num_words=2, per_word=True)
    assert math.isclose(total["ppl"], math.exp(7 / 4))  # not (e + e^4) / 2
    assert math.isclose(total["word_ppl"], math.exp(7 / 2)) and total["words"] == 2
    assert "word_ppl" not in method_totals(nll, 4, per_word=False)
    assert perplexity(1e6, 1) == math.inf and math.isnan(perplexity(0.0, 0))


def test_position_bins_and_smoothing():
    nll = torch.tensor([4.0, 2.0, 0.0, 6.0, 3.0])
    rel = torch.tensor([0.0, 0.5, 0.75, 0.0, 0.9])
    mean, count = position_bins(nll, rel, 2)
    assert count.tolist() == [2, 3] and mean.tolist() == [5.0, 5.0 / 3]
    mean, count = position_bins(nll, rel, 4)
    assert count.tolist() == [2, 0, 1, 2] and math.isnan(mean[1])
    torch.testing.assert_close(moving_average(torch.tensor([2.0, 4.0, 6.0, 8.0]), 2),
                               torch.tensor([2.0, 3.0, 5.0, 7.0], dtype=torch.float64))
    starts, means = chunk_means(torch.arange(10.0), 4)
    assert starts.tolist() == [0, 3, 6, 9] and means.tolist() == [1.0, 4.0, 7.0, 9.0]
    gain = torch.tensor([0.5, -0.2, 3.0, -1.0])
    assert pick_extreme_articles(gain, torch.tensor([200, 200, 10, 10]), 100) == [0, 1]  # short ones ignored
    assert pick_extreme_articles(gain, torch.tensor([5, 5, 5, 5]), 100) == [2, 3]  # unless all are short


def test_html_page_escapes_tokens_and_shows_the_scale():
    tokens = ["<script>alert(1)</script>", "a&b", "<unk>", "<eos>", "next"]
    static = torch.tensor([3.0, 2.0, 5.0, 1.0, 2.0])
    meta = torch.tensor([1.0, 2.0, 6.0, 1.0, 0.0])
    page = article_page('Title "<b>"', 4, tokens, "word", static, meta, "meta", scale=2.0)
    body = page.split("<body>")[1]
    assert "<script>" not in body and "&lt;script&gt;alert(1)&lt;/script&gt;" in body
    assert "a&amp;b" in body and "&lt;unk&gt;" in body and "<unk>" not in body
    assert "Title &quot;&lt;b&gt;&quot;" in page and '"<b>"' not in page
    assert body.count('title="static ') == 5 and body.count("<br>") == 1  # one span per token; eos ends a line
    assert "≤ −2.00" in body and "≥ +2.00" in body and "linear-gradient" in body
    assert gain_color(2.0, 2.0) == "rgb(46,160,67)" and gain_color(-5.0, 2.0) == "rgb(214,39,40)"
    assert gain_color(0.0, 2.0) == "rgb(255,255,255)"
    sp = article_page("t", 0, ["\u2581Hello", "lo", "\u2581world"], "sentencepiece", static[:3], meta[:3], "dyneval")
    assert ">Hello<" in sp.replace(" Hello", "Hello") and "\u2581" not in sp.split("<body>")[1]


def test_meta_training_follows_a_validation_article(tmp_path):
    """Each evaluation appends the article's curves; the history and quarter gains come back."""
    logged = []
    logger = SimpleNamespace(run_dir=tmp_path, enabled=True, wandb=None, log_media=lambda *a, **k: logged.append(a))
    static = torch.full((120,), 5.0)
    for step, g in ((10, 0.5), (20, 1.0)):
        meta = static - g * torch.linspace(0, 1, 120)
        q = follow_article(logger, step, "Art", {"static": static, "dyneval": static - 0.1, "learned": meta})
        assert list(q) == [f"valid/article/learned_gain_q{i}" for i in range(1, 5)]
        assert q["valid/article/learned_gain_q1"] < q["valid/article/learned_gain_q4"]
    recs = [json.loads(x) for x in (tmp_path / CURVES_FILE).read_text().splitlines()]
    assert [r["step"] for r in recs] == [10, 20] and recs[0]["tokens"] == 120 and len(recs[0]["x"]) == 40
    assert logged == []  # no wandb run: nothing sent


def test_a_torn_line_in_the_followed_article_log_is_skipped(tmp_path, capsys):
    """A kill during an append leaves half a line: the next evaluation skips it (and says so) instead of failing."""
    logger = SimpleNamespace(run_dir=tmp_path, enabled=True, wandb=None, log_media=lambda *a, **k: None)
    static = torch.full((40,), 5.0)
    follow_article(logger, 10, "Art", {"static": static, "dyneval": static, "learned": static - 0.5})
    with open(tmp_path / CURVES_FILE, "a", encoding="utf-8") as f:
        f.write('{"step": 20, "title": "Ar')
    q = follow_article(logger, 30, "Art", {"static": static, "dyneval": static, "learned": static - 1.0})
    assert q["valid/article/learned_gain_q1"] == pytest.approx(1.0)
    assert "skipped 1 torn line" in capsys.readouterr().out
    assert [r["step"] for r in read_jsonl(tmp_path / CURVES_FILE)[0]] == [10, 30]  # the new record is whole


def test_wandb_panels_offline(tmp_path, monkeypatch):
    """The wandb objects of both panels build and log in an offline run."""
    from omegaconf import OmegaConf

    from dynlm.config import LoggerConfig
    from dynlm.eval.wandb_panels import log_evaluation
    from dynlm.run.logger import RunLogger

    monkeypatch.setenv("WANDB_SILENT", "true")
    logger = RunLogger(tmp_path, OmegaConf.structured(LoggerConfig(name="wandb", mode="offline")), {"x": 1})
    try:
        static = torch.full((60,), 5.0)
        follow_article(logger, 1, "Art", {"static": static, "dyneval": static - 0.1, "learned": static - 0.2})
        results = {
            "split": "valid", "per_word": False,
            "methods": {m: {"tokens": 3, "nll": 1.0, "loss": 0.3, "ppl": 1.4} for m in ("static", "learned")},
            "articles": [{"index": 0, "title": "A", "tokens": 3, "words": 3, "static": {"nll": 2.0, "ppl": 2.0},
                          "learned": {"nll": 1.0, "ppl": 1.4}}],
            "position_bins": {"centers": [0.25, 0.75], "loss": {"static": [1.0, float("nan")], "learned": [0.5, 0.4]},
                              "gain": {"learned": [0.5, float("nan")]}},
        }
        page = tmp_path / "p.html"
        page.write_text("<html><body>x</body></html>")
        log_evaluation(logger, results, {}, {"article_0": page})
    finally:
        logger.finish()
    run = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(run) == 1
    names = {p.name.split("_")[0] for p in (run[0] / "files" / "media").rglob("*.json")}
    assert {"loss", "learned", "overall", "articles"} <= names
