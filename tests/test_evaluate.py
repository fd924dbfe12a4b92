"""End to end: train a tiny checkpoint (stage 1, then stage 2), evaluate it like scripts/evaluate.py does, and
check every output file for existence and internal consistency."""
import csv
import hashlib
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from dynlm.dynamic.reading import read_stream
from dynlm.eval.evaluate import evaluate
from dynlm.eval.html import color_scale
from dynlm.run.from_checkpoint import load_lm
from dynlm.train import train
from dynlm.train.lm_trainer import evaluate_loss
from eval_helpers import compose_eval, one_thread  # noqa: F401 (autouse fixture)
from hydra_helpers import compose_config, meta_overrides, records, train_tiny_lm

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def trained(wikitext2_dir, tmp_path_factory):
    """(data, stage-1 run, stage-2 run): a few steps each on the first lines of WikiText-2."""
    from conftest import write_slice

    root = tmp_path_factory.mktemp("evaluate")
    data = write_slice(wikitext2_dir, root / "wt2", {"train": 3000, "valid": 400, "test": 400})
    lm = root / "lm"
    lm_ckpt = train_tiny_lm(data, lm, "last.pt", **{"trainer.max_steps": 6, "trainer.eval_interval": 6})
    meta = root / "meta"
    over = meta_overrides(data, lm_ckpt, **{
        "meta.batch_size": 2, "meta.seg_len": 10, "meta.window": 2, "meta.gradstat_tokens": 400,
        "trainer.max_steps": 2, "trainer.eval_interval": 1, "logger": "wandb", "logger.mode": "offline"})
    train(compose_config(over), meta)
    return data, lm, meta


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def close(a, b, rel=1e-9):
    return math.isclose(a, b, rel_tol=rel, abs_tol=1e-9)


def check_outputs(run: Path, results: dict, split) -> None:
    """Every file of an evaluation run folder, and the identities between them."""
    on_disk = json.loads((run / "results.json").read_text())
    assert on_disk["methods"] == results["methods"] and on_disk["articles"] == results["articles"]
    methods = list(results["methods"])
    n, n_art = results["num_tokens"], results["num_articles"]
    rows = results["articles"]
    # token counts: articles add up to the evaluated stream, which is the split's first n_art articles
    assert sum(r["tokens"] for r in rows) == n
    assert [r["tokens"] for r in rows] == split.article_lengths[:n_art].tolist()
    assert n == (split.num_tokens if n_art == split.num_articles else int(split.article_starts[n_art]))
    assert [r["title"] for r in rows] == split.titles[:n_art]
    for m in methods:
        tot = results["methods"][m]
        assert tot["tokens"] == n
        assert close(tot["nll"], sum(r[m]["nll"] for r in rows))  # total NLL = sum of per-article NLLs
        assert close(tot["ppl"], math.exp(tot["nll"] / n))  # from sums, never a mean of per-article ppl
        for r in rows:
            assert close(r[m]["ppl"], math.exp(r[m]["nll"] / r["tokens"]))
    pos = results["position_bins"]
    assert sum(pos["tokens"]) == n and len(pos["centers"]) == pos["bins"]
    for m in methods:
        weighted = sum(c * x for c, x in zip(pos["tokens"], pos["loss"][m]) if c)
        assert close(weighted, results["methods"][m]["nll"], rel=1e-6)
    for m in methods[1:]:
        assert all(close(g, s - x) for g, s, x in zip(pos["gain"][m], pos["loss"]["static"], pos["loss"][m]) if not
                   math.isnan(g))
    # the CSV holds the same numbers
    with open(run / "per_article.csv", encoding="utf-8") as f:
        table = list(csv.DictReader(f))
    assert len(table) == n_art
    for r, line in zip(rows, table):
        assert int(line["index"]) == r["index"] and line["title"] == r["title"] and int(line["tokens"]) == r["tokens"]
        for m in methods:
            assert float(line[f"{m}_nll"]) == r[m]["nll"] and float(line[f"{m}_ppl"]) == r[m]["ppl"]
    # every token's loss, located
    z = np.load(run / "token_losses.npz")
    assert list(z["methods"]) == methods
    assert np.array_equal(z["token_id"], split.ids[:n].numpy())
    assert np.array_equal(z["article_id"], split.article_id[:n].numpy())
    assert np.array_equal(z["position"], split.position[:n].numpy())
    assert list(z["titles"]) == split.titles[:n_art]
    for m in methods:
        assert z[m].shape == (n,) and z[m].dtype == np.float32
        assert close(float(z[m].astype(np.float64).sum()), results["methods"][m]["nll"], rel=1e-6)
        per_art = np.bincount(z["article_id"], weights=z[m].astype(np.float64), minlength=n_art)
        assert all(close(float(a), r[m]["nll"], rel=1e-6) for a, r in zip(per_art, rows))
    for name in results["files"]["plots"].values():
        assert (run / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    expected_plots = {"loss_by_position", "article_ppl"} | ({"instant_gain"} if len(methods) > 1 else set())
    assert set(results["files"]["plots"]) == expected_plots
    if results["html_articles"]:  # one colour scale for every page: that of all the tokens evaluated
        m = "learned" if "learned" in methods else "dyneval"
        gain = torch.from_numpy(z["static"]).double() - torch.from_numpy(z[m]).double()
        assert close(results["html_color_scale"], color_scale(gain), rel=1e-4)
    for a in results["html_articles"]:
        page = (run / "html" / f"article_{a}.html").read_text(encoding="utf-8")
        assert f"≥ +{results['html_color_scale']:.2f}" in page
        assert page.count('title="static ') == rows[a]["tokens"]  # one coloured span per token
        assert "linear-gradient" in page and "loss gain" in page  # the colour scale and its legend
        assert "<unk>" not in page.split("<body>")[1]  # tokens are escaped
        assert f"article {a}: " in page


@pytest.mark.slow
def test_evaluate_all_methods_end_to_end(trained, tmp_path):
    data, lm, meta = trained
    ckpt = meta / "checkpoints" / "best.pt"
    digest = sha256(ckpt)
    cfg = compose_eval([f"checkpoint={ckpt}", "split=valid", "eval.max_articles=2", "eval.position_bins=8",
                        "eval.progress_bar=false"])
    run = tmp_path / "eval"
    results = evaluate(cfg, run)
    assert sha256(ckpt) == digest == results["checkpoint"]["sha256"]  # the checkpoint file is untouched
    assert results["static_weights_unchanged"]
    assert results["checkpoint"]["stage"] == "meta" and results["grad_stats"]["source"] == "checkpoint"
    assert results["seg_len"] == 10 and results["num_articles"] == 2
    assert results["data"]["checksums"]["valid"] == results["data"]["checkpoint_checksums"]["valid"]
    assert results["config"]["checkpoint"] == str(ckpt) and results["checkpoint_config"]["stage"] == "meta"
    split = load_split(data, "valid")
    check_outputs(run, results, split)
    # default HTML pages: where meta helps most and least
    assert len(results["html_articles"]) == 2
    gains = [(r["static"]["nll"] - r["learned"]["nll"]) / r["tokens"] for r in results["articles"]]
    assert results["html_articles"] == [int(np.argmax(gains)), int(np.argmin(gains))]
    # the untrained-ish learner starts as dyneval: both adapt, and far better than static on this tiny model
    assert results["methods"]["dyneval"]["ppl"] < results["methods"]["static"]["ppl"]
    assert results["methods"]["learned"]["ppl"] < results["methods"]["static"]["ppl"]
    scalars = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    assert close(scalars["eval/valid/learned/ppl"], results["methods"]["learned"]["ppl"])

    # meta-training followed the first valid article at each evaluation (file and wandb offline run)
    curves = [json.loads(x) for x in (meta / "valid_article.jsonl").read_text().splitlines()]
    assert [c["step"] for c in curves] == [1, 2]
    assert all(len(c["x"]) == len(c["static"]) == len(c["learned"]) == len(c["dyneval"]) for c in curves)
    assert curves[0]["tokens"] == split.article_lengths[0]
    recs = records(meta)
    assert all(math.isfinite(r["valid/article/learned_gain_q4"]) for r in recs if "valid/learned/ppl" in r)
    offline = list((meta / "wandb").glob("offline-run-*"))
    assert len(offline) == 1
    media = [p.name for p in (offline[0] / "files" / "media").rglob("*.table.json")]
    assert any("loss_curve" in m for m in media) and any("learned_gain_history" in m for m in media)


def load_split(data: Path, name: str):
    from dynlm.config import DataConfig
    from dynlm.data import load_corpus

    return load_corpus(DataConfig(dir=str(data)), splits=(name,)).splits[name]


@pytest.mark.slow
def test_static_equals_the_trainers_valid_perplexity(trained, tmp_path):
    """Same checkpoint, same split: evaluate's static number is the trainer's valid/ppl (data from the checkpoint)."""
    data, lm, _ = trained
    ckpt = lm / "checkpoints" / "last.pt"
    results = evaluate(compose_eval([f"checkpoint={ckpt}", "split=valid", "methods=[static]"]), tmp_path / "eval")
    logged = records(lm)
    valid_ppl = [r["valid/ppl"] for r in logged if "valid/ppl" in r][-1]
    assert close(results["methods"]["static"]["ppl"], valid_ppl, rel=1e-12)
    assert results["data"]["source"] == str(data.resolve())  # data.dir defaulted to the checkpoint's
    model, _ = load_lm(ckpt, torch.device("cpu"))
    from omegaconf import OmegaConf

    from dynlm.data import load_corpus

    corpus = load_corpus(OmegaConf.create(json.loads((lm / "config.json").read_text())["data"]))
    assert close(math.exp(evaluate_loss(model, corpus, "valid", 64)), results["methods"]["static"]["ppl"], rel=1e-12)
    check_outputs(tmp_path / "eval", results, corpus.splits["valid"])
    assert results["html_articles"] == []  # nothing to compare static with


@pytest.mark.slow
def test_dyneval_on_a_stage1_checkpoint_measures_statistics_and_resets_per_article(trained, tmp_path, capsys):
    data, lm, _ = trained
    ckpt = lm / "checkpoints" / "last.pt"
    cfg_overrides = [f"checkpoint={ckpt}", f"data.dir={data}", "split=test", "methods=[static,dyneval]",
                     "eval.max_articles=2", "eval.reset_per_article=true", "eval.gradstat_tokens=300",
                     "eval.seg_len=10", "eval.progress_bar=false", "eval.dyneval_eta=0.0001",
                     f"data.cache_dir={tmp_path / 'cache'}"]
    cfg = compose_eval(cfg_overrides)
    results = evaluate(cfg, tmp_path / "eval")
    assert "measuring them on 300 train tokens" in capsys.readouterr().out
    assert results["grad_stats"]["source"] == "measured" and results["grad_stats"]["tokens"] >= 300
    # the same evaluation again reads the statistics from the cache: same numbers, no measurement
    again = evaluate(cfg, tmp_path / "again")
    out = capsys.readouterr().out
    assert "measuring" not in out and "from the cache" in out and again["grad_stats"]["source"] == "cached"
    assert again["methods"]["dyneval"]["nll"] == results["methods"]["dyneval"]["nll"]
    fresh = evaluate(compose_eval([*cfg_overrides, "eval.cache_grad_stats=false"]), tmp_path / "fresh")
    assert fresh["grad_stats"]["source"] == "measured"
    # the override, and Krause's default λ (a stage-1 checkpoint's own meta config was never used: not read)
    assert results["dyneval"]["eta"] == 0.0001 and results["dyneval"]["lam"] == 0.002
    assert math.isfinite(results["methods"]["dyneval"]["ppl"])
    split = load_split(data, "test")
    check_outputs(tmp_path / "eval", results, split)
    assert results["html_articles"] and all(
        "dyneval" in (tmp_path / "eval" / "html" / f"article_{a}.html").read_text() for a in results["html_articles"])
    # per-article reset: the second article reads as if it were alone
    model, _ = load_lm(ckpt, torch.device("cpu"))
    alone = read_stream(model, split.article(1), 0, 64)
    assert close(results["articles"][1]["static"]["nll"], float(alone.double().sum()), rel=1e-6)


@pytest.mark.slow
def test_scripts_evaluate_runs_with_wandb_offline(trained, tmp_path):
    data, _, meta = trained
    run = tmp_path / "eval"
    env = {**os.environ, "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1", "WANDB_SILENT": "true"}
    proc = subprocess.run(
        [sys.executable, "scripts/evaluate.py", f"checkpoint={meta / 'checkpoints' / 'last.pt'}", "split=valid",
         "methods=[static,learned]", "eval.max_articles=1", "eval.progress_bar=false", "logger=wandb",
         f"hydra.run.dir={run}"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "learned  ppl" in proc.stdout
    results = json.loads((run / "results.json").read_text())
    assert list(results["methods"]) == ["static", "learned"]
    check_outputs(run, results, load_split(data, "valid"))
    offline = list((run / "wandb").glob("offline-run-*"))
    assert len(offline) == 1
    media = offline[0] / "files" / "media"
    assert list(media.rglob("*.html")) and list(media.rglob("*.png"))
    tables = [p.name for p in media.rglob("*.table.json")]
    assert any(t.startswith("articles") for t in tables) and any(t.startswith("loss_by_position") for t in tables)


@pytest.mark.slow
def test_sentencepiece_checkpoint_reports_per_word_perplexity(wikitext2_slice_dir, tmp_path):
    from dynlm.eval.inputs import load_inputs
    from eval_helpers import make_checkpoint

    ckpt = make_checkpoint(wikitext2_slice_dir, tmp_path / "sp.pt",
                           overrides=["data.tokenizer=sentencepiece", "data.vocab_size=500"])
    cfg = compose_eval([f"checkpoint={ckpt}", "split=valid", "eval.max_articles=1", "eval.gradstat_tokens=200",
                        "eval.progress_bar=false", "methods=[static,dyneval]"])
    results = evaluate(cfg, tmp_path / "eval")
    split = load_inputs(cfg).split
    assert results["per_word"] and results["data"]["tokenizer"] == "sentencepiece"
    words = results["articles"][0]["words"]
    assert words == results["num_words"] < results["num_tokens"]  # pieces outnumber words
    for tot in results["methods"].values():
        assert tot["words"] == words and close(tot["word_ppl"], math.exp(tot["nll"] / words))
    check_outputs(tmp_path / "eval", results, split)
    page = (tmp_path / "eval" / "html" / "article_0.html").read_text(encoding="utf-8")
    assert "\u2581" not in page.split("<body>")[1]  # word-start markers shown as spaces


@pytest.mark.slow
def test_a_dyneval_sweep_gives_one_folder_per_setting_and_one_table(trained, tmp_path):
    """The README's tuning recipe: `evaluate.py -m` over dyneval settings, then `sweep_table.py`."""
    _, lm, _ = trained
    sweep = tmp_path / "sweep"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "scripts/evaluate.py", "-m", f"checkpoint={lm / 'checkpoints' / 'last.pt'}",
         "split=valid", "methods=[static,dyneval]", "eval.max_articles=1", "eval.progress_bar=false",
         "eval.gradstat_tokens=400", "eval.dyneval_eta=0.002,0.05", f"hydra.sweep.dir={sweep}"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    jobs = {p.parent.name: json.loads(p.read_text()) for p in sweep.rglob("results.json")}
    # Folder names list the job's settings, leaving out those excluded in conf/evaluate.yaml (checkpoint, ...).
    assert set(jobs) == {f"eval.dyneval_eta={lr},eval.gradstat_tokens=400" for lr in ("0.002", "0.05")}
    assert {j["dyneval"]["eta"] for j in jobs.values()} == {0.002, 0.05}
    static = {j["methods"]["static"]["ppl"] for j in jobs.values()}
    assert len(static) == 1  # the baseline does not depend on the swept rule
    assert len({j["methods"]["dyneval"]["ppl"] for j in jobs.values()}) == 2

    table = subprocess.run([sys.executable, "scripts/sweep_table.py", str(sweep), "--sort-by", "dyneval"],
                           cwd=REPO, capture_output=True, text=True, timeout=60)
    assert table.returncode == 0, table.stderr
    header, *rows = table.stdout.strip().splitlines()
    assert header.split() == ["job", "tokens", "static", "dyneval"]
    best = min(jobs, key=lambda name: float(jobs[name]["methods"]["dyneval"]["ppl"]))  # "inf" if it diverged
    assert rows[0].split()[0] == best and len(rows) == 2
    for row in rows:
        name, tokens, static_ppl, dyneval_ppl = row.split()
        assert int(tokens) == jobs[name]["num_tokens"]
        assert float(dyneval_ppl) == pytest.approx(float(jobs[name]["methods"]["dyneval"]["ppl"]), abs=0.005)

    missing = subprocess.run([sys.executable, "scripts/sweep_table.py", str(tmp_path / "nothing")],
                             cwd=REPO, capture_output=True, text=True, timeout=60)
    assert missing.returncode != 0 and "no results.json" in missing.stderr


def test_sweep_table_ranks_diverged_settings_last(tmp_path):
    # results.json stores a non-finite perplexity as the string "inf" or "nan" (strict JSON)
    import json

    from dynlm.eval.sweep import format_sweep, sweep_rows

    for name, ppl in (("lr1", 120.5), ("lr2", "inf"), ("lr3", "nan"), ("lr4", 99.0)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "results.json").write_text(json.dumps(
            {"num_tokens": 10, "methods": {"static": {"ppl": 150.0}, "dyneval": {"ppl": ppl}}}))
    table = format_sweep(sweep_rows(tmp_path), "dyneval").splitlines()
    assert [line.split()[0] for line in table[1:3]] == ["lr4", "lr1"]
    assert {line.split()[0] for line in table[3:]} == {"lr2", "lr3"} and "inf" in table[3] + table[4]
