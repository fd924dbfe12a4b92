"""Distributed training on CPU (gloo, 2 processes): both stages match one process with all the streams,
meta-gradients are all-reduced, checkpoints hold per-stream states in global order (so a run resumes on
any number of ranks), and a torchrun job whose rank dies restarts from its last checkpoint.

Models have every dropout at 0: with dropout, each rank draws its own masks and runs cannot match.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from torch.distributed import TCPStore

from dynlm import dist
from dynlm.run.checkpoint import load_checkpoint
from dynlm.run.setup import mark_owner, resume_path
from dynlm.train import train
from dynlm.train.estimators import ESTIMATORS
from hydra_helpers import JOINT_CASES, SCRATCH_JOINT, compose_config, meta_overrides, tiny_lm_overrides, train_tiny_lm

REPO = Path(__file__).resolve().parents[1]
NO_DROPOUT = {f"model.{k}": 0 for k in ("dropout", "dropouth", "dropouti", "dropoute", "wdrop")}
TOL = dict(rtol=1e-4, atol=1e-5)


def _worker(rank: int, world: int, port: int, jobs: list) -> None:
    """One rank of a gloo group set up the way torchrun sets up its workers (env://, the agent's store at
    MASTER_PORT); runs `jobs` = [(kind, overrides, arg)]."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(world), TORCHELASTIC_USE_AGENT_STORE="True")
    torch.set_num_threads(1)
    assert dist.init_distributed("gloo")
    try:
        for kind, overrides, arg in jobs:
            cfg = compose_config(overrides)
            if kind == "expect_error":
                with pytest.raises(ValueError, match=arg):
                    train(cfg, "unused")
            elif kind == "train":
                train(cfg, arg)
            elif kind == "train_recording_meta_grads":
                _train_recording_meta_grads(cfg, arg, rank)
    finally:
        dist.destroy()


def _train_recording_meta_grads(cfg, run_dir, rank):
    """Record the first window's meta-gradients just before and just after they are all-reduced (one process: the
    same twice), in grads-<run folder's name>-rank<rank>.pt next to the run folder."""
    # the all-reduce of the estimator the run uses, as its module calls it
    module = sys.modules[ESTIMATORS[cfg.meta.estimator].__module__]
    original, calls = module.average_over_ranks, []

    def recording(params):
        before = [p.grad.detach().clone() for p in params if p.grad is not None]
        original(params)
        calls.append((before, [p.grad.detach().clone() for p in params if p.grad is not None]))

    module.average_over_ranks = recording
    try:
        train(cfg, run_dir)
    finally:
        module.average_over_ranks = original
    torch.save(calls[0], Path(run_dir).parent / f"grads-{Path(run_dir).name}-rank{rank}.pt")


def spawn(world: int, jobs: list) -> None:
    """Run `jobs` on `world` ranks. The rendezvous store is this process's, as torchrun's agent keeps one for its
    workers, and listens from the moment it has its port: a port found free here and bound later by rank 0 (seconds
    later: it starts Python first) can be taken in between by another process of a busy machine."""
    store = TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False)
    mp.spawn(_worker, args=(world, store.port, jobs), nprocs=world, join=True)


def _assert_close_tree(a, b, path=""):
    if isinstance(a, torch.Tensor):
        torch.testing.assert_close(a, b, **TOL, msg=lambda m: f"{path}: {m}")
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for k in a:
            _assert_close_tree(a[k], b[k], f"{path}/{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_close_tree(x, y, f"{path}/{i}")
    elif isinstance(a, float):
        assert a == pytest.approx(b, rel=1e-6), path
    else:
        assert a == b, path


# --- single-process pieces (fast) ---------------------------------------------------------------------------


def test_stream_gather_and_shard_are_inverse_on_one_process():
    t = torch.arange(12.0).view(4, 3)
    assert torch.equal(dist.gather_streams(t), t) and torch.equal(dist.shard_streams(t), t)
    assert dist.sum_floats(1.5, 2) == [1.5, 2.0] and dist.broadcast_float(3.0) == 3.0
    assert dist.gather_objects({"a": 1}) == [{"a": 1}]
    assert dist.default_backend() in ("gloo", "nccl") and not dist.init_distributed()  # not under torchrun


def test_an_elastic_restart_resumes_from_the_run_folder(tmp_path, monkeypatch):
    last = tmp_path / "checkpoints" / "last.pt"
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "job-a")
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "0")
    mark_owner(tmp_path)  # the first attempt of job-a runs in this folder
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "1")
    assert resume_path(False, tmp_path) is None  # nothing saved yet: start over
    last.parent.mkdir(parents=True)
    last.write_bytes(b"")
    assert resume_path(False, tmp_path) == last
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "job-b")  # another job's run: never resumed behind the user's back
    assert resume_path(False, tmp_path) is None
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "0")
    assert resume_path(False, tmp_path) is None


def test_injected_failure_fires_once_on_the_first_attempt(monkeypatch):
    dist.inject_failure(None, 3)
    dist.inject_failure(4, 3)
    with pytest.raises(RuntimeError, match="injected failure"):
        dist.inject_failure(3, 3)
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "1")
    dist.inject_failure(3, 3)  # the restarted job goes past the step


# --- two gloo processes ---------------------------------------------------------------------------------------


@pytest.mark.slow
def test_stage1_two_ranks_match_one_rank_and_resume_on_one(toy_data_dir, tmp_path):
    """2 ranks × 2 streams == 1 rank × 4 streams; the 2-rank checkpoint resumes on 1 rank exactly."""
    over = tiny_lm_overrides(toy_data_dir, **NO_DROPOUT, **{
        "data.batch_size": 4, "trainer.max_steps": 6, "trainer.eval_interval": 3, "optim.nonmono": 0})
    one, two = tmp_path / "one", tmp_path / "two"
    train(compose_config(over + ["trainer.stop_after_steps=3"]), one)
    a3 = load_checkpoint(one / "checkpoints" / "last.pt")
    train(compose_config(over + ["trainer.resume=true"]), one)
    a6 = load_checkpoint(one / "checkpoints" / "last.pt")

    spawn(2, [
        ("expect_error", over + ["data.batch_size=3"], "not divisible"),
        ("train", over + ["trainer.stop_after_steps=3"], str(two)),
    ])
    b3 = load_checkpoint(two / "checkpoints" / "last.pt")
    assert b3["progress"]["step"] == 3 and b3["progress"]["position"] == a3["progress"]["position"]
    assert b3["progress"]["tokens"] == a3["progress"]["tokens"]
    assert len(b3["rng_ranks"]) == 2
    for key in ("train_weights", "model", "hidden"):
        _assert_close_tree(a3[key], b3[key], key)
    assert b3["hidden"][0][0].shape[0] == 4  # gathered: every global stream, in global order
    _assert_close_tree(a3["progress"]["best_valid_loss"], b3["progress"]["best_valid_loss"])

    train(compose_config(over + ["trainer.resume=true"]), two)  # 2 ranks -> 1 rank
    b6 = load_checkpoint(two / "checkpoints" / "last.pt")
    assert b6["progress"]["step"] == 6
    for key in ("train_weights", "hidden"):
        _assert_close_tree(a6[key], b6[key], key)


@pytest.fixture(scope="module")
def lm_no_dropout(toy_data_dir, tmp_path_factory):
    return train_tiny_lm(toy_data_dir, tmp_path_factory.mktemp("lm0"),
                         **NO_DROPOUT, **{"trainer.max_steps": 10, "trainer.eval_interval": 10})


META_SIZES = {"meta.batch_size": 4, "meta.seg_len": 4, "meta.window": 2, "meta.gradstat_tokens": 200,
              "meta.valid_max_tokens": 100, "trainer.max_steps": 4, "trainer.eval_interval": 2}


# The learned rules (gated with its per-coordinate momentum state, a key only it reads; cheap with its per-stream
# ([B, 2]) learner state), and joint training, θ0 trained too
STAGE2_CASES = {"gated": {"rule": "gated", "rule.momentum": "true"}, "cheap": {"rule": "cheap"}, **JOINT_CASES}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(STAGE2_CASES.values()), ids=list(STAGE2_CASES))
def test_stage2_two_ranks_match_one_rank_and_meta_gradients_are_all_reduced(toy_data_dir, lm_no_dropout, tmp_path,
                                                                            case):
    over = meta_overrides(toy_data_dir, lm_no_dropout, **META_SIZES, **case)
    joint = case.get("meta.train_static") == "true"
    one, two = tmp_path / "one", tmp_path / "two"
    _train_recording_meta_grads(compose_config(over + ["trainer.stop_after_steps=2"]), one, 0)
    a2 = load_checkpoint(one / "checkpoints" / "last.pt")
    train(compose_config(over + ["trainer.resume=true"]), one)
    a4 = load_checkpoint(one / "checkpoints" / "last.pt")

    spawn(2, [("train_recording_meta_grads", over + ["trainer.stop_after_steps=2"], str(two))])
    b2 = load_checkpoint(two / "checkpoints" / "last.pt")
    assert b2["progress"]["step"] == 2 and b2["progress"]["position"] == a2["progress"]["position"]
    assert b2["grad_stats"]["tokens"] == a2["grad_stats"]["tokens"]
    # θ0 (trained only in joint runs), φ, and Adam's moments of both
    for key in ("grad_stats", "meta_learner", "reading_state", "static_lm", "model", "meta_optimizer"):
        _assert_close_tree(a2[key], b2[key], key)
    assert next(iter(b2["reading_state"]["fast"].values())).shape[0] == 4  # every global stream
    assert all(t.shape[0] == 4 for t in b2["reading_state"]["learner"].values())
    assert ("weight" in b2["meta_learner"]) == (case["rule"] == "cheap")  # the rule asked for (cheap's φ: weight, bias)
    lm = load_checkpoint(lm_no_dropout)["model"]
    moved = [n for n, t in lm.items() if not torch.equal(b2["model"][n], t)]
    assert moved == (list(lm) if joint else []), moved  # θ0 trained in joint runs only

    # Each rank's meta-gradient is of its own streams' loss: different before the all-reduce, identical
    # after it, and equal to their mean (= the gradient of the mean over all streams: one rank's with all of them).
    (before0, after0), (before1, after1) = (torch.load(tmp_path / f"grads-two-rank{r}.pt") for r in (0, 1))
    _, alone = torch.load(tmp_path / "grads-one-rank0.pt")
    # φ's gradients, then θ0's (every parameter) in joint runs
    assert len(before0) == len(before1) == len(after0) == len(alone) == len(b2["meta_learner"]) + joint * len(lm)
    assert any(not torch.allclose(x, y) for x, y in zip(before0, before1))
    for x, y, s, t, g in zip(after0, after1, before0, before1, alone):
        assert torch.equal(x, y)
        torch.testing.assert_close(x, (s + t) / 2)
        torch.testing.assert_close(x, g, **TOL)

    train(compose_config(over + ["trainer.resume=true"]), two)  # 2 ranks -> 1 rank
    b4 = load_checkpoint(two / "checkpoints" / "last.pt")
    assert b4["progress"]["step"] == 4
    for key in ("meta_learner", "reading_state", "model", "meta_optimizer"):
        _assert_close_tree(a4[key], b4[key], key)


@pytest.mark.slow
def test_stage2_from_scratch_on_two_ranks_matches_one_rank(toy_data_dir, tmp_path):
    """Joint training from scratch: every rank builds the same θ0 and measures the same statistics, at the start and
    at every refresh (steps 3 and 6)."""
    over = meta_overrides(toy_data_dir, None, **{**SCRATCH_JOINT, **NO_DROPOUT, "meta.batch_size": 4})
    one, two = tmp_path / "one", tmp_path / "two"
    train(compose_config(over), one)
    spawn(2, [("train", over, str(two))])
    a, b = (load_checkpoint(run / "checkpoints" / "last.pt") for run in (one, two))
    assert a["progress"]["step"] == b["progress"]["step"] == 6
    assert torch.equal(a["anchor"]["embedding.weight"], b["anchor"]["embedding.weight"])  # the same fresh θ0
    for key in ("model", "grad_stats", "reading_state", "static_lm", "meta_optimizer"):
        _assert_close_tree(a[key], b[key], key)


@pytest.mark.slow
def test_torchrun_elastic_restart_after_a_rank_dies(toy_data_dir, tmp_path):
    """`torchrun --max-restarts=1`: rank 1 raises at step 5 on the first attempt; the restarted job resumes
    from the step-3 checkpoint of the fixed run folder and finishes with a valid step-8 checkpoint."""
    run = tmp_path / "run"
    over = tiny_lm_overrides(toy_data_dir, **{"trainer.max_steps": 8, "trainer.eval_interval": 3,
                                               "trainer.fail_at_step": 5})
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "--max-restarts=1",
           "--monitor-interval=0.5", "scripts/train.py", *over, f"hydra.run.dir={run}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert "injected failure on rank 1 at step 5" in out
    assert "elastic restart 1: resuming from" in out and "at step 3" in out
    ckpt = load_checkpoint(run / "checkpoints" / "last.pt")
    assert ckpt["progress"]["step"] == 8 and ckpt["stage"] == "lm"
    assert len(ckpt["rng_ranks"]) == 2 and ckpt["hidden"][0][0].shape[0] == 4
    assert all(bool(torch.isfinite(t).all()) for t in ckpt["model"].values())
