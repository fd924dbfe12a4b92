"""Scoring a text of one's own: `scripts/evaluate.py checkpoint=... text=FILE` (articles from optional `= Title =`
lines, the checkpoint's tokenizer, unknown words counted, every token's loss in token_losses.csv)."""
import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dynlm.config import DataConfig
from dynlm.data import DataError, article_line_starts, load_corpus, read_text_file, tokenizer_from_state_dict
from dynlm.data.articles import header_line_starts
from dynlm.data.sources import read_split_file
from dynlm.eval.evaluate import evaluate
from dynlm.eval.inputs import EvalConfigError
from dynlm.run.checkpoint import load_checkpoint
from eval_helpers import compose_eval, one_thread  # noqa: F401 (autouse fixture)

REPO = Path(__file__).resolve().parents[1]

PLAIN = "The game began development in 2010 .\nIt was a zorblax and a wibble day .\n"
# a preface, then two articles; the second header has no blank line after it, the "= = Section = =" is a heading
HEADED = ("A few words before any title .\n\n= First one =\n\nThe game began in 2010 .\n\n= = Section = =\n"
          "The war ended .\n\n = Second one = \nIt was a qqqq day .\n")


def test_header_lines_start_articles_when_they_begin_the_text_or_follow_a_blank_line():
    lines = HEADED.split("\n")[:-1]
    starts, titles = header_line_starts(lines)
    assert titles == ["(untitled)", "First one", "Second one"]
    assert [lines[s] for s in starts[1:]] == ["= First one =", " = Second one = "]
    assert header_line_starts(["= Only one =", "text"], untitled="f.txt") == ([0], ["Only one"])
    assert header_line_starts(["no title", "", "more"], untitled="f.txt") == ([0], ["f.txt"])
    assert header_line_starts(["", "= T =", "x"])[1] == ["T"]  # blank lines alone join the first article
    assert header_line_starts(["text", "= T =", "x"])[1] == ["(untitled)"]  # no blank line before: not a header


def test_wikitext_files_read_as_text_give_their_articles(wikitext2_dir):
    for name in ("valid.txt", "test.txt"):
        lines = read_split_file(wikitext2_dir / name).lines
        assert header_line_starts(lines) == article_line_starts(lines), name


def _write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return path


def test_word_vocabulary_counts_unknown_words_and_reads_them_as_unk(lm_checkpoint, tmp_path):
    _, ckpt = lm_checkpoint
    tok = tokenizer_from_state_dict(load_checkpoint(ckpt)["tokenizer"])
    text = read_text_file(_write(tmp_path, "plain.txt", PLAIN), tok)
    assert dict(text.unknown) == {"zorblax": 1, "wibble": 1}
    assert text.split.titles == ["plain.txt"] and text.num_words == 16 and text.num_lines == 2
    assert tok.decode(text.split.ids).count("<unk>") == 2
    assert text.split.num_tokens == 16 + 2  # one <eos> per line


def test_sentencepiece_reads_any_text_as_trained(wikitext2_slice_dir, tmp_path):
    tok = load_corpus(DataConfig(dir=str(wikitext2_slice_dir), tokenizer="sentencepiece", vocab_size=500),
                      splits=("valid",)).tokenizer
    text = read_text_file(_write(tmp_path, "t.txt", PLAIN + "Ünïcödé ☃ zorblax\n"), tok)
    assert not text.unknown  # byte fallback: nothing is unknown
    assert text.split.ids.tolist() == [i for line in PLAIN.split("\n")[:-1] + ["Ünïcödé ☃ zorblax"]
                                       for i in tok.encode_line(line)]


def _eval(ckpt, text, run, *more):
    return evaluate(compose_eval([f"checkpoint={ckpt}", f"text={text}", "eval.progress_bar=false",
                                  "eval.gradstat_tokens=500", "eval.cache_grad_stats=false", *more]), run)


def _token_rows(run: Path):
    with open(run / "token_losses.csv", encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_a_text_without_headers_is_one_article_with_every_token_loss_in_a_csv(lm_checkpoint, tmp_path):
    _, ckpt = lm_checkpoint
    path = _write(tmp_path, "plain.txt", PLAIN)
    run = tmp_path / "eval"
    results = _eval(ckpt, path, run, "methods=[static,dyneval]")
    assert results["split"] == "text" and results["num_articles"] == 1
    assert results["articles"][0]["title"] == "plain.txt"
    assert results["text"]["unknown_words"] == 2 and results["text"]["words"] == 16
    assert results["text"]["most_frequent_unknown"] == [["zorblax", 1], ["wibble", 1]]
    rows = _token_rows(run)
    assert len(rows) == results["num_tokens"] == 18
    assert [r["token"] for r in rows][:3] == ["The", "game", "began"]
    assert [r["token"] for r in rows if r["token"] == "<unk>"] == ["<unk>"] * 2
    assert [int(r["position"]) for r in rows] == list(range(18)) and {r["article"] for r in rows} == {"0"}
    for m in ("static", "dyneval"):
        total = sum(float(r[m]) for r in rows)
        assert math.isclose(total, results["methods"][m]["nll"], rel_tol=1e-9)
    assert (run / "per_article.csv").is_file() and (run / "token_losses.npz").is_file()
    assert results["files"]["token_losses_csv"] == "token_losses.csv"


@pytest.mark.slow
def test_the_documented_command_scores_a_text_with_headers(lm_checkpoint, tmp_path):
    _, ckpt = lm_checkpoint
    path = _write(tmp_path, "headed.txt", HEADED)
    run = tmp_path / "eval"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}
    proc = subprocess.run([sys.executable, "scripts/evaluate.py", f"checkpoint={ckpt}", f"text={path}",
                           "methods=[static]", f"hydra.run.dir={run}"], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "are not in the checkpoint's vocabulary and are read as <unk> (" in proc.stdout + proc.stderr
    results = json.loads((run / "results.json").read_text())
    assert [a["title"] for a in results["articles"]] == ["headed.txt", "First one", "Second one"]
    rows = _token_rows(run)
    starts = [i for i, r in enumerate(rows) if r["position"] == "0"]
    assert [rows[i]["article"] for i in starts] == ["0", "1", "2"]
    assert [rows[i]["token"] for i in starts] == ["A", "=", "="]  # the headers are read, as WikiText's titles are
    assert [a["tokens"] for a in results["articles"]] == [starts[1], starts[2] - starts[1], len(rows) - starts[2]]
    assert list(rows[0]) == ["index", "article", "position", "token", "static"]
    assert (run / "evaluate.log").is_file() and "token_losses.csv" in (run / "evaluate.log").read_text()


def test_bad_text_arguments_fail_before_any_work(lm_checkpoint, tmp_path):
    _, ckpt = lm_checkpoint
    with pytest.raises(EvalConfigError, match="give one of them"):
        _eval(ckpt, tmp_path / "x.txt", tmp_path / "a", "split=valid")
    with pytest.raises(DataError, match="no such file"):
        _eval(ckpt, tmp_path / "missing.txt", tmp_path / "b", "methods=[static]")
    with pytest.raises(DataError, match="is empty"):
        _eval(ckpt, _write(tmp_path, "empty.txt", ""), tmp_path / "c", "methods=[static]")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
