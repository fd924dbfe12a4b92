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


@pytest.mark.slow
def test_readme_quick_check_on_full_wikitext2(wikitext2_dir, tmp_path):
    """The README's quick check: model=tiny, 50 steps on the full data; valid ppl far below |V| = 33,278."""
    run = tmp_path / "x"
    proc = _run(["scripts/train.py", "model=tiny", f"data.dir={wikitext2_dir}", "trainer.max_steps=50", "logger=none",
                 f"hydra.run.dir={run}", "trainer.progress_bar=false"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    for f in ["config.yaml", "metrics.jsonl", "checkpoints/last.pt", "checkpoints/best.pt"]:
        assert (run / f).is_file(), f
    valid = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if "valid/ppl" in x]
    assert valid and valid[-1]["valid/ppl"] < 33278 / 10


def test_unknown_key_fails_before_any_work(tmp_path):
    proc = _run(["scripts/train.py", "model.hiden_size=3", f"hydra.run.dir={tmp_path / 'r'}"])
    assert proc.returncode != 0
    assert "hiden_size" in proc.stderr and "not in" in proc.stderr
    assert not (tmp_path / "r" / "metrics.jsonl").exists()


def test_missing_data_folder_names_the_fix(tmp_path):
    proc = _run(["scripts/train.py", "model=tiny", f"data.dir={tmp_path / 'nowhere'}", f"hydra.run.dir={tmp_path / 'r'}"])
    assert proc.returncode != 0
    assert "data.dir" in proc.stderr or "nowhere" in proc.stderr


@pytest.mark.slow
def test_wandb_offline_logging(wikitext2_slice_dir, tmp_path, monkeypatch):
    from dynlm.train import train

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    run = tmp_path / "run"
    train(compose_config(tiny_lm_overrides(wikitext2_slice_dir, **{"logger": "wandb", "logger.mode": "offline", "trainer.max_steps": 4,
                                                                   "trainer.eval_interval": 4})), run)
    offline = list((run / "wandb").glob("offline-run-*"))
    assert offline, list(run.rglob("*"))[:20]
    assert any(p.suffix == ".wandb" for p in offline[0].iterdir())
