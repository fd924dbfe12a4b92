"""Joint training from scratch (issue #25: `stage=meta meta.lm_checkpoint=null meta.train_static=true`), and
gradient statistics that follow θ0 (`meta.gradstat_refresh`): a refresh makes every constant the rule reads those
of statistics measured on the current θ0; a from-scratch run starts from stage 1's initialisation, trains,
refreshes, resumes bit for bit across a refresh, and its checkpoint evaluates."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from conftest import write_slice
from dynamic_helpers import RandomStreams, tiny_meta_learning
from dynlm.config import ConfigValueError, MetaConfig, check_ranges
from dynlm.data import Split, load_corpus
from dynlm.dynamic.grad_stats import measure_grad_stats
from dynlm.dynamic.rules import build_rule, rule_config
from dynlm.model import build_model
from dynlm.run.checkpoint import load_checkpoint
from dynlm.train import train
from dynlm.train.gradstat_refresh import refresh_grad_stats, refresh_interval
from dynlm.train.meta_start import check_start
from hydra_helpers import SCRATCH_JOINT, compose_config, meta_overrides, straight_and_resumed

REPO = Path(__file__).resolve().parents[1]
STREAMS, SEG, TOKENS = 3, 4, 120


def random_split(seed: int = 3) -> Split:
    ids = torch.randint(0, 23, (400,), generator=torch.Generator().manual_seed(seed))
    return Split("train", ids, torch.zeros_like(ids), torch.arange(400), ["a"], torch.tensor([0]), 400)


def rule_constants(rule):
    """Everything a rule reads that is not φ: its buffers and the statistics' scales."""
    scalars = {k: getattr(rule, k) for k in ("mean_rms", "mean_v", "decay_norm", "update_gate", "whitened_names")
               if hasattr(rule, k)}
    return {n: b.clone() for n, b in rule.named_buffers()}, scalars


@pytest.mark.parametrize("rule,extra", [("dyneval", {"whiten": True, "momentum_beta": 0.5}), ("cheap", {}),
                                        ("gated", {})])
def test_a_refresh_makes_the_rule_read_statistics_measured_on_the_current_theta0(rule, extra):
    estimator = "first_order" if rule == "dyneval" else "bptt"
    ml = tiny_meta_learning(dynamic=["*"], rule=rule, train_static=True, estimator=estimator,
                            gradstat_refresh=2, gradstat_refresh_tokens=TOKENS, gradstat_streams=STREAMS, seg_len=SEG)
    cfg = rule_config(rule, like={"eta": 0.01, "lam": 0.02, **extra})
    # measured statistics (whitening reads their input moments), and the rule with the options asked
    ml.stats = measure_grad_stats(ml.model, ml.names, random_split(seed=4).ids, STREAMS, SEG, TOKENS)
    ml.learner = build_rule(cfg, ml.names, ml.stats)
    ml.optimizer.param_groups[0]["params"] = list(ml.learner.parameters())
    phi = {k: v.clone() for k, v in ml.learner.state_dict().items()}
    before = rule_constants(ml.learner)
    with torch.no_grad():  # θ0 as training leaves it: not where the statistics were measured
        for p in ml.model.parameters():
            p.mul_(1.5)
    split = random_split()
    refresh_grad_stats(ml, split, step=2)

    direct = measure_grad_stats(ml.model, ml.names, split.ids, STREAMS, SEG, TOKENS)
    assert direct.tokens == ml.stats.tokens >= TOKENS
    for n in ml.names:
        assert torch.equal(ml.stats.v[n], direct.v[n]), n
    buffers, scalars = rule_constants(ml.learner)
    expected_buffers, expected_scalars = rule_constants(build_rule(cfg, ml.names, direct))
    assert buffers.keys() == expected_buffers.keys() and scalars == expected_scalars
    for k, b in expected_buffers.items():
        assert torch.equal(buffers[k], b), k
    assert any(not torch.equal(before[0][k], b) for k, b in buffers.items())  # they changed
    for k, v in ml.learner.state_dict().items():  # φ did not
        assert torch.equal(v, phi[k]), k
    assert all(p is q for p, q in zip(ml.optimizer.param_groups[0]["params"], ml.learner.parameters()))


def test_a_refreshed_rule_steps_as_one_built_from_the_new_statistics():
    """Not only its constants: the update itself (dyneval over every parameter, factored gradients included)."""
    from dynlm.train.meta_trainer import fresh_window_state
    from dynlm.train.window_reading import read_window

    ml = tiny_meta_learning(dynamic=["*"], rule="dyneval", train_static=True, estimator="first_order",
                            gradstat_refresh=1, gradstat_streams=STREAMS, seg_len=SEG, gradstat_tokens=TOKENS)
    refresh_grad_stats(ml, random_split(), step=1)
    reads = []
    for rule in (ml.learner, build_rule(rule_config("dyneval", like={"eta": 0.01, "lam": 0.02}), ml.names,
                                        ml.stats)):
        ml.learner = rule
        state, _ = fresh_window_state(ml, 2)
        torch.manual_seed(0)
        reads.append(read_window(ml, RandomStreams(seg_len=4, batch=2), 0, state, None, ml.estimator.reading))
    for n in ml.names:
        assert torch.equal(reads[0].state.fast[n], reads[1].state.fast[n]), n


def meta(**over):
    return OmegaConf.merge(OmegaConf.structured(MetaConfig), over)


@pytest.mark.parametrize("over,says", [
    ({}, "pass meta.lm_checkpoint=<a stage-1 best.pt>, or set meta.train_static=true"),
    ({"train_static": True, "ewc": 1.0}, "meta.ewc=1.0 pulls θ0 toward the stage-1 weights"),
    ({"train_static": True, "gradstat_refresh_tokens": 100}, "has no effect without meta.gradstat_refresh"),
    ({"train_static": True, "lm_checkpoint": "x.pt", "gradstat_refresh": 5, "ewc": 1.0}, "use one of the two"),
])
def test_what_a_start_cannot_do_is_refused_in_one_line(over, says):
    with pytest.raises(ConfigValueError, match=says.replace(".", r"\.").replace("[", r"\[")) as e:
        check_start(meta(**over))
    assert "\n" not in str(e.value)


def test_a_refresh_is_refused_where_theta0_does_not_train():
    cfg = compose_config(["stage=meta", "meta.gradstat_refresh=5"])
    with pytest.raises(ConfigValueError, match="meta.gradstat_refresh=5 has no effect with meta.train_static=false"):
        check_ranges(cfg)


def test_a_refresh_is_refused_for_a_rule_that_cannot_take_new_statistics():
    class Plain(torch.nn.Module):
        pass

    joint = meta(gradstat_refresh=5, train_static=True)
    assert refresh_interval(joint, "dyneval", build_rule(rule_config("dyneval"), ["w"], _unit_stats())) == 5
    with pytest.raises(ConfigValueError, match="rule=toy cannot take new gradient statistics"):
        refresh_interval(joint, "toy", Plain())
    assert refresh_interval(meta(train_static=True), "toy", Plain()) is None


def _unit_stats():
    from dynlm.dynamic.grad_stats import GradStats

    return GradStats({"w": torch.ones(3, 2)}, tokens=1)


def test_stage_meta_without_a_checkpoint_names_both_fixes(tmp_path):
    with pytest.raises(ConfigValueError, match="meta.lm_checkpoint=<a stage-1 best.pt>, or set meta.train_static"):
        train(compose_config(["stage=meta", "trainer.device=cpu"]), tmp_path)
    assert not list(tmp_path.iterdir())  # nothing written


@pytest.fixture(scope="module")
def scratch_runs(wikitext2_dir, tmp_path_factory):
    """`(data, root)`: a from-scratch joint run straight through (root/full), stopped after 4 steps and resumed
    (root/split), and straight through again (root/again)."""
    root = tmp_path_factory.mktemp("scratch")
    # a vocabulary small enough that dyneval's step on the table takes the blocks (no compiling)
    data = write_slice(wikitext2_dir, root / "wt2", {"train": 600, "valid": 200, "test": 200})
    over = meta_overrides(data, None, **SCRATCH_JOINT)
    straight_and_resumed(over, root, stop_after=4)
    train(compose_config(over), root / "again")
    return data, root


@pytest.mark.slow
def test_from_scratch_theta0_is_stage_1s_initialisation_and_it_trains(scratch_runs):
    data, root = scratch_runs
    last = load_checkpoint(root / "full" / "checkpoints" / "last.pt")
    cfg = last["config"]
    assert last["stage"] == "meta" and cfg["meta"]["lm_checkpoint"] is None and cfg["model"]["name"] == "tiny"
    # the held-out cut recorded as stage 1 records it, and θ0 learns from train
    assert cfg["data"]["meta_holdout_articles"] == 1 and cfg["meta"]["split"] == "train"
    # θ0 at step 0 (the anchor): what stage 1 builds with the same seed, after reading the same data
    corpus = load_corpus(OmegaConf.create(cfg).data, splits=("train", "valid"))
    torch.manual_seed(cfg["trainer"]["seed"])
    fresh = build_model(OmegaConf.create(cfg["model"]), corpus.tokenizer.vocab_size)
    for n, p in fresh.named_parameters():
        assert torch.equal(last["anchor"][n], p.detach()), n
        assert not torch.equal(last["model"][n], p.detach()), n  # every parameter trained
    records = [json.loads(line) for line in (root / "full" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["valid/static/loss"] for r in records if "valid/static/loss" in r]
    assert len(losses) == 3 and losses[-1] < losses[0]  # θ0 learns


@pytest.mark.slow
def test_from_scratch_checkpoints_store_the_statistics_of_their_theta0_and_resume_bit_identical(scratch_runs):
    from test_kill_resume import _assert_same

    data, root = scratch_runs
    full, split, again = (load_checkpoint(root / r / "checkpoints" / "last.pt") for r in ("full", "split", "again"))
    _assert_same(full, split)  # stopped at step 4, between the refreshes of steps 3 and 6
    _assert_same(full, again)  # deterministic
    # refreshed at step 6, before that step's checkpoint: the statistics of the checkpoint's own θ0
    model = build_model(OmegaConf.create(full["config"]["model"]), full["model"]["embedding.weight"].shape[0])
    model.load_state_dict(full["model"], strict=False)
    with torch.no_grad():
        for n, p in model.named_parameters():
            p.copy_(full["model"][n])
    train_split = load_corpus(OmegaConf.create(full["config"]).data, splits=("train",)).splits["train"]
    direct = measure_grad_stats(model, full["dynamic_names"], train_split.ids, 100, 4, 200)
    assert full["grad_stats"]["tokens"] == direct.tokens
    for n in full["dynamic_names"]:
        assert torch.equal(full["grad_stats"]["v"][n], direct.v[n]), n
    first = load_checkpoint(root / "full" / "checkpoints" / "best.pt")  # an earlier step's: other statistics
    assert not torch.equal(first["grad_stats"]["v"]["embedding.weight"], direct.v["embedding.weight"])


@pytest.mark.slow
def test_a_from_scratch_checkpoint_evaluates_with_scripts_evaluate(scratch_runs, tmp_path):
    data, root = scratch_runs
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled", "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "scripts/evaluate.py", f"checkpoint={root / 'full' / 'checkpoints' / 'last.pt'}",
         "split=valid", "methods=[static,dyneval]", "eval.max_articles=1", "eval.progress_bar=false",
         f"hydra.run.dir={tmp_path}"], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    assert list(results["methods"]) == ["static", "dyneval"]
    assert results["grad_stats"]["source"] == "checkpoint"  # the refreshed ones the run stored
    assert all(m["nll"] > 0 for m in results["methods"].values())
