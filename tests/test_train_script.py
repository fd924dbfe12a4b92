"""The README's commands, run the way a user runs them."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hydra_helpers import compose_config, tiny_lm_overrides

REPO = Path(__file__).resolve().parents[1]


def _run(args, **env):
    full_env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", **env}
    return subprocess.run([sys.executable, *args], cwd=REPO, env=full_env, capture_output=True, text=True, timeout=900)


def readme_quick_checks() -> list:
    """The commands of the README's "first few minutes" block, as argument lists."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    block = text.split("## The first few minutes", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    commands = " ".join(line.split("#")[0].strip() for line in block.splitlines()).split("python ")
    return [c.replace("\\", " ").split() for c in commands if c.strip()]


@pytest.mark.slow
def test_readme_quick_checks_run_in_a_chain(wikitext2_dir, tmp_path):
    """The README's three quick checks, as written (full WikiText-2), each reading what the previous wrote."""
    commands = readme_quick_checks()
    assert [c[0] for c in commands] == ["scripts/train.py", "scripts/train.py", "scripts/evaluate.py"]
    for args in commands:
        args = [a.replace("runs/quick-", f"{tmp_path}/quick-").replace("../shared/data/wikitext-2", str(wikitext2_dir))
                for a in args]
        proc = _run(args + ["trainer.progress_bar=false" if "train" in args[0] else "eval.progress_bar=false"])
        assert proc.returncode == 0, proc.stderr[-3000:]
    for f in ["quick-lm/checkpoints/best.pt", "quick-meta/checkpoints/best.pt", "quick-eval/results.json"]:
        assert (tmp_path / f).is_file(), f
    valid = [json.loads(x) for x in (tmp_path / "quick-lm/metrics.jsonl").read_text().splitlines() if "valid/ppl" in x]
    assert valid[-1]["valid/tokens"] == 20000 and valid[-1]["valid/ppl"] < 33278 / 10
    results = json.loads((tmp_path / "quick-eval/results.json").read_text())
    assert list(results["methods"]) == ["static", "dyneval", "learned"] and results["num_articles"] == 2


def test_unknown_key_fails_before_any_work(tmp_path):
    proc = _run(["scripts/train.py", "model.hiden_size=3", f"hydra.run.dir={tmp_path / 'r'}"])
    assert proc.returncode != 0
    assert "hiden_size" in proc.stderr and "not in" in proc.stderr
    assert not (tmp_path / "r" / "metrics.jsonl").exists()


def test_missing_data_folder_names_the_fix(tmp_path):
    proc = _run(["scripts/train.py", "model=tiny", f"data.dir={tmp_path / 'nowhere'}",
                 f"hydra.run.dir={tmp_path / 'r'}"])
    assert proc.returncode != 0
    assert "data.dir" in proc.stderr or "nowhere" in proc.stderr


@pytest.mark.slow
def test_wandb_offline_logging(wikitext2_slice_dir, tmp_path, monkeypatch):
    from dynlm.train import train

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    run = tmp_path / "run"
    over = {"logger": "wandb", "logger.mode": "offline", "trainer.max_steps": 4, "trainer.eval_interval": 4}
    train(compose_config(tiny_lm_overrides(wikitext2_slice_dir, **over)), run)
    offline = list((run / "wandb").glob("offline-run-*"))
    assert offline, list(run.rglob("*"))[:20]
    assert any(p.suffix == ".wandb" for p in offline[0].iterdir())
