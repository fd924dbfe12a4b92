"""scripts/reproduce_small.sh, the README's one command for its Results, run end to end at tiny sizes."""
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_reproduce_script_runs_every_step(wikitext2_dir, tmp_path):
    from conftest import write_slice

    data = write_slice(wikitext2_dir, tmp_path / "wt2", {"train": 3000, "valid": 300, "test": 300})
    out = tmp_path / "out"
    env = {
        **os.environ, "WANDB_MODE": "disabled", "DATA": str(data), "OUT": str(out), "MODEL": "tiny",
        "LM_STEPS": "4", "HOLDOUT": "1", "GRID_LR": "1e-4,3e-4,1e-3", "GRID_LR_LSTM": "3e-4,1e-3",
        "GRID_LAM": "0.003,0.01",
        "GRID_ARTICLES": "1", "VALID_ARTICLES": "2", "TEST_ARTICLES": "1",
        "LM_ARGS": "data.bptt=20 trainer.device=cpu trainer.eval_interval=2",
        "META_STEPS": "2", "META_ARGS": "meta.window=2 meta.batch_size=1 meta.valid_max_tokens=300 trainer.device=cpu",
        "EVAL_ARGS": "eval.gradstat_tokens=500",
    }
    proc = subprocess.run(["bash", "scripts/reproduce_small.sh"], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    lm_steps = [json.loads(x)["step"] for x in (out / "lm" / "metrics.jsonl").read_text().splitlines()]
    assert max(lm_steps) == 4  # replayed by step count, not by time
    ckpt = str(out / "lm" / "checkpoints" / "best.pt")
    for split in ("valid", "test"):
        static = json.loads((out / f"static-{split}" / "results.json").read_text())
        assert list(static["methods"]) == ["static"] and static["num_articles"] == static["split_articles"]
        assert static["checkpoint"]["path"] == ckpt
        assert f"{split}: static {static['methods']['static']['ppl']:.2f}" in proc.stdout
    for adapted, lstm_only, rates in (("all", False, (1e-4, 3e-4, 1e-3)), ("lstm", True, (3e-4, 1e-3))):
        grid = [json.loads(p.read_text()) for p in (out / f"grid-{adapted}").rglob("results.json")]
        assert {(r["dyneval"]["eta"], r["dyneval"]["lam"]) for r in grid} == {
            (lr, lam) for lr in rates for lam in (0.003, 0.01)} and len(grid) == 2 * len(rates)
        # a diverged setting (η 1e-3 here) stores "inf" or "nan": it must not be chosen
        best = min(grid, key=lambda r: float(r["methods"]["dyneval"]["ppl"]) if r["methods"]["dyneval"]["ppl"] != "nan"
                   else float("inf"))
        names = best["dyneval"]["adapted"]
        assert all(n.startswith("layers.") for n in names) == lstm_only and "layers.0.weight_hh" in names
        assert all(r["grad_stats"]["source"] == "cached" for r in grid)  # measured once, before the grid
        for split in ("valid", "test"):
            tuned = json.loads((out / f"tuned-{adapted}-{split}" / "results.json").read_text())
            assert list(tuned["methods"]) == ["static", "dyneval"]
            assert tuned["num_articles"] == {"valid": 2, "test": 1}[split]
            tuned_rule, best_rule = tuned["dyneval"], best["dyneval"]
            assert (tuned_rule["eta"], tuned_rule["lam"]) == (best_rule["eta"], best_rule["lam"])
            assert tuned["dyneval"]["adapted"] == names
            assert f"first {tuned['num_articles']} articles ({tuned['num_tokens']} tokens)" in proc.stdout
        if lstm_only:
            lstm_best = (best["dyneval"]["eta"], best["dyneval"]["lam"])
    # the learned row: stage 2 of the small_cheap_es recipe from the LSTM weights' tuned dyneval, by step count
    meta_run = out / "meta"
    assert max(json.loads(x)["step"] for x in (meta_run / "metrics.jsonl").read_text().splitlines()) == 2
    saved = yaml.safe_load((meta_run / "config.yaml").read_text())
    meta, rule = saved["meta"], saved["rule"]
    chosen = (rule["name"], meta["estimator"], meta["dynamic"], meta["lm_checkpoint"])
    assert chosen == ("cheap", "es", ["layers.*"], ckpt)
    assert (rule["eta"], rule["lam"]) == lstm_best
    for split in ("valid", "test"):
        learned = json.loads((out / f"learned-{split}" / "results.json").read_text())
        assert list(learned["methods"]) == ["static", "dyneval", "learned"]
        assert learned["num_articles"] == {"valid": 2, "test": 1}[split]
    assert proc.stdout.count("the learned rule (rule=cheap, ES, LSTM weights)") == 2


def test_reproduce_script_stops_on_a_failed_step(tmp_path):
    env = {**os.environ, "WANDB_MODE": "disabled", "DATA": str(tmp_path / "nowhere"), "OUT": str(tmp_path / "out")}
    proc = subprocess.run(["bash", "scripts/reproduce_small.sh"], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode != 0
    assert "static perplexity" not in proc.stdout  # set -e: nothing runs after the failed stage 1
    assert "nowhere" in proc.stderr
