"""scripts/reproduce_small.sh, the README's one command for its Results, run end to end at tiny sizes."""
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_reproduce_script_runs_every_step(wikitext2_dir, tmp_path):
    from conftest import write_slice

    data = write_slice(wikitext2_dir, tmp_path / "wt2", {"train": 3000, "valid": 300, "test": 300})
    out = tmp_path / "out"
    env = {
        **os.environ, "WANDB_MODE": "disabled", "DATA": str(data), "OUT": str(out), "MODEL": "tiny",
        "LM_STEPS": "4", "META_STEPS": "2", "TUNED_LR": "0.0001", "TUNED_LAM": "0.003",
        "LM_ARGS": "data.batch_size=4 data.bptt=20 trainer.progress_bar=false trainer.device=cpu",
        "META_ARGS": "meta.batch_size=2 meta.window=2 meta.gradstat_tokens=400 meta.valid_articles=1 "
                     "trainer.progress_bar=false trainer.device=cpu",
        "EVAL_ARGS": "eval.max_articles=2",
    }
    proc = subprocess.run(["bash", "scripts/reproduce_small.sh"], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    lm_steps = [json.loads(x)["step"] for x in (out / "lm" / "metrics.jsonl").read_text().splitlines()]
    meta_steps = [json.loads(x)["step"] for x in (out / "meta" / "metrics.jsonl").read_text().splitlines()]
    assert max(lm_steps) == 4 and max(meta_steps) == 2  # replayed by step counts, not by time
    for split in ("valid", "test"):
        results = json.loads((out / f"eval-{split}" / "results.json").read_text())
        assert results["split"] == split and results["num_articles"] == 2
        assert set(results["methods"]) == {"static", "dyneval", "meta"}
        assert results["checkpoint"]["path"] == str(out / "meta" / "checkpoints" / "best.pt")
        assert f"{split}: {results['num_tokens']} tokens, 2 articles, perplexity  static " in proc.stdout
        tuned = json.loads((out / f"eval-dyneval-tuned-{split}" / "results.json").read_text())
        assert list(tuned["methods"]) == ["static", "dyneval"] and tuned["num_articles"] == 2
        assert (tuned["dyneval"]["lr"], tuned["dyneval"]["lam"]) == (0.0001, 0.003)
        assert tuned["methods"]["static"]["nll"] == results["methods"]["static"]["nll"]
        assert f"{split} (dyneval tuned): {tuned['num_tokens']} tokens, 2 articles" in proc.stdout


def test_reproduce_script_stops_on_a_failed_step(tmp_path):
    env = {**os.environ, "WANDB_MODE": "disabled", "DATA": str(tmp_path / "nowhere"), "OUT": str(tmp_path / "out")}
    proc = subprocess.run(["bash", "scripts/reproduce_small.sh"], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode != 0
    assert "stage 2" not in proc.stdout  # set -e: nothing runs after the failed stage 1
    assert "nowhere" in proc.stderr
