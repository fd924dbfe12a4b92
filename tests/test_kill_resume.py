"""SIGKILL at several points of both stages (between checkpoints, halfway through a checkpoint write), resume
each time, and end bit-identical to a run that was never interrupted: weights, optimiser, averager, reading
state, RNGs, and the same log records, none twice. Stage 2 also as joint training (θ0 trained too), which must
leave its input, the stage-1 checkpoint, as it was."""
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import write_slice
from dynlm.run.checkpoint import load_checkpoint
from hydra_helpers import JOINT_CASES, SCRATCH_JOINT, meta_overrides, tiny_lm_overrides

REPO = Path(__file__).resolve().parents[1]
WRAPPER = str(Path(__file__).with_name("kill_wrapper.py"))
# wall-clock quantities, and the settings that say how each process was started
NOT_COMPARED = {"elapsed", "valid_seconds", "time", "train/tokens_per_s", "meta/tokens_per_s", "meta/window_s",
                "resume", "overwrite"}


def _train(args, kill=None):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}
    cmd = [sys.executable, *([WRAPPER, kill] if kill else []), "scripts/train.py", *args]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


def _assert_same(a, b, where="checkpoint"):
    """Equal, tensors bit for bit (`NOT_COMPARED` keys excepted)."""
    if isinstance(a, dict):
        assert set(a) == set(b), f"{where}: keys {set(a) ^ set(b)}"
        for k in a:
            if k not in NOT_COMPARED:
                _assert_same(a[k], b[k], f"{where}/{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same(x, y, f"{where}[{i}]")
    elif isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b), where
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def _records(run: Path):
    return [{k: v for k, v in json.loads(line).items() if k not in NOT_COMPARED}
            for line in (run / "metrics.jsonl").read_text().splitlines()]


def _killed_then_resumed(args, run: Path, kills):
    """Start, kill at `kills[0]`, then resume and kill at each next point, then resume to the end. A run killed
    before its first checkpoint starts over on trainer.resume=true (there is nothing to resume)."""
    for i, kill in enumerate(kills + [None]):
        last = run / "checkpoints" / "last.pt"
        before = load_checkpoint(last)["progress"]["step"] if last.is_file() else None
        proc = _train(args + (["trainer.resume=true"] if i else []), kill)
        if kill is None:
            assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
            continue
        assert proc.returncode == -9, (kill, proc.returncode, proc.stderr[-3000:])
        if kill.startswith("write"):  # it died inside a checkpoint write: half a temporary, last.pt as it was
            assert list((run / "checkpoints").glob(".*.pt.*.tmp"))
            assert (load_checkpoint(last)["progress"]["step"] if last.is_file() else None) == before
    assert not list((run / "checkpoints").glob("*.tmp"))  # the torn write's temporary is gone


def _compare(full: Path, split: Path):
    for name in ("last.pt", "best.pt"):
        _assert_same(load_checkpoint(full / "checkpoints" / name), load_checkpoint(split / "checkpoints" / name),
                     name)
    assert _records(full) == _records(split)


@pytest.mark.slow
def test_stage1_killed_three_times_ends_bit_identical(wikitext2_slice_dir, tmp_path):
    args = tiny_lm_overrides(wikitext2_slice_dir, **{"optim.nonmono": 0, "trainer.eval_interval": 4})
    full, split = tmp_path / "full", tmp_path / "split"
    assert _train(args + [f"hydra.run.dir={full}"]).returncode == 0
    # checkpoints at steps 4, 8, 12 (best.pt when better, then last.pt); the resumed run dies in its 2nd write
    _killed_then_resumed(args + [f"hydra.run.dir={split}"], split, ["step:6", "write:2", "step:10"])
    _compare(full, split)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# φ alone (θ0 fixed), and each way of training θ0 with it
STAGE2_CASES = {"phi-only": {}, **JOINT_CASES}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(STAGE2_CASES.values()), ids=list(STAGE2_CASES))
def test_stage2_killed_three_times_ends_bit_identical(wikitext2_dir, tmp_path, case):
    # a vocabulary small enough (< 8k words) that dyneval's step on the table (meta.dynamic=[*]) takes the blocks,
    # not seconds of compiling in every process
    data = write_slice(wikitext2_dir, tmp_path / "wt2", {"train": 600, "valid": 200, "test": 200})
    lm = tmp_path / "lm"
    assert _train(tiny_lm_overrides(data, **{"trainer.max_steps": 20}) + [f"hydra.run.dir={lm}"]).returncode == 0
    stage1 = lm / "checkpoints" / "best.pt"
    digest = _sha256(stage1)
    args = meta_overrides(data, stage1, **{
        "meta.batch_size": 2, "meta.seg_len": 4, "meta.window": 2, "meta.gradstat_tokens": 400,
        "meta.valid_max_tokens": 200, "trainer.max_steps": 6, "trainer.eval_interval": 2, **case})
    full, split = tmp_path / "full", tmp_path / "split"
    assert _train(args + [f"hydra.run.dir={full}"]).returncode == 0
    assert _sha256(stage1) == digest
    # step 1: before any checkpoint; checkpoints at steps 2, 4, 6: the resumed run's first write is at step 4
    _killed_then_resumed(args + [f"hydra.run.dir={split}"], split, ["step:1", "step:3", "write:1"])
    assert _sha256(stage1) == digest  # the input of two runs and three resumes, never written
    _compare(full, split)

    last, theta0 = load_checkpoint(full / "checkpoints" / "last.pt"), load_checkpoint(stage1)["model"]
    moved = [n for n, t in theta0.items() if not torch.equal(last["model"][n], t)]
    trained = case.get("meta.train_static") == "true"
    assert moved == (list(theta0) if trained else []), moved
    assert all(torch.equal(last["anchor"][n], t) for n, t in theta0.items())  # EWC's anchor: stage 1's θ0
    # Adam on φ and, with joint training, on θ0: a state for each (its moments compared bit for bit above)
    groups = last["meta_optimizer"]["param_groups"]
    assert [len(g["params"]) for g in groups[1:]] == ([len(theta0)] if trained else [])
    assert set(last["meta_optimizer"]["state"]) == {i for g in groups for i in g["params"]}


@pytest.mark.slow
def test_stage2_from_scratch_killed_across_refreshes_ends_bit_identical(wikitext2_dir, tmp_path):
    """Joint training from scratch with the gradient statistics measured again at steps 3 and 6 (checkpoints at 2,
    4, 6): killed before any checkpoint (it starts over, from scratch), after the refresh of step 3 (it resumes
    from step 2 and measures again), and halfway through the resumed run's first write."""
    data = write_slice(wikitext2_dir, tmp_path / "wt2", {"train": 600, "valid": 200, "test": 200})
    args = meta_overrides(data, None, **SCRATCH_JOINT)
    full, split = tmp_path / "full", tmp_path / "split"
    assert _train(args + [f"hydra.run.dir={full}"]).returncode == 0
    _killed_then_resumed(args + [f"hydra.run.dir={split}"], split, ["step:1", "step:3", "write:1"])
    _compare(full, split)
