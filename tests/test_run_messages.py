"""What a user sees while a run works: progress bars on every long pass, and the run's messages kept in its
folder (train.log / evaluate.log), with no empty log files beside them."""
import os
import subprocess
import sys
from pathlib import Path

from dynlm.config import TrainerConfig
from dynlm.run.progress import Progress, budget_exhausted

REPO = Path(__file__).resolve().parents[1]


def _run(args):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}
    return subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


def _no_empty_logs(run: Path) -> None:
    empty = [p.name for p in run.glob("*.log") if p.stat().st_size == 0]
    assert not empty, f"empty log files: {empty}"


def test_bars_and_logs_of_both_scripts(wikitext2_slice_dir, tmp_path):
    lm = tmp_path / "lm"
    proc = _run(["scripts/train.py", "model=tiny", f"data.dir={wikitext2_slice_dir}", "data.batch_size=4",
                 "data.bptt=20", "trainer.max_epochs=null", "trainer.max_steps=12", "trainer.eval_interval=6",
                 "trainer.device=cpu", f"hydra.run.dir={lm}"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = (lm / "train.log").read_text()
    assert "step 6: valid loss" in log and "step 12: valid loss" in log and "done: step 12" in log
    _no_empty_logs(lm)
    err = proc.stderr
    assert "valid:" in err and "train: 100%" in err  # the validation pass has its bar
    # the training bar is closed before the final validation: it is not drawn again after it
    assert err.rfind("train: 100%") < err.rfind("valid:")

    ev = tmp_path / "eval"
    proc = _run(["scripts/evaluate.py", f"checkpoint={lm / 'checkpoints' / 'best.pt'}", "split=valid",
                 "methods=[static,dyneval]", "eval.max_articles=1", "eval.gradstat_tokens=400",
                 "eval.cache_grad_stats=false", f"hydra.run.dir={ev}"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    for bar in ("gradient statistics:", "static:", "dyneval:"):
        assert bar in proc.stderr, bar
    log = (ev / "evaluate.log").read_text()
    assert "measured on" in log and "dyneval  ppl" in log
    _no_empty_logs(ev)


def test_max_time_counts_training_not_validation():
    cfg = TrainerConfig(max_time=50.0)
    assert not budget_exhausted(cfg, Progress(elapsed=100.0, valid_seconds=60.0))  # 40 s of training
    assert budget_exhausted(cfg, Progress(elapsed=100.0, valid_seconds=40.0))  # 60 s
