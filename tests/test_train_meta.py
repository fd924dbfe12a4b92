"""Stage 2: meta-training runs, resumes exactly, and survives a non-finite stream."""
import math

import pytest
import torch

from dynlm.run.checkpoint import load_checkpoint
from dynlm.train import train
from dynlm.train.meta_trainer import train_meta
from hydra_helpers import compose_config, meta_overrides, records, straight_and_resumed

SIZES = {"meta.batch_size": 3, "meta.seg_len": 4, "meta.window": 3, "meta.gradstat_tokens": 600,
         "meta.valid_max_tokens": 300, "trainer.max_steps": 6, "trainer.eval_interval": 3}


def overrides(data, ckpt, **extra):
    return meta_overrides(data, ckpt, **SIZES, **extra)


@pytest.mark.slow
def test_meta_training_run_folder_metrics_and_checkpoint(lm_checkpoint, tmp_path):
    data, ckpt = lm_checkpoint
    run = tmp_path / "meta"
    train(compose_config(overrides(data, ckpt)), run)
    recs = records(run)
    steps = [r for r in recs if "meta/loss" in r]
    assert [r["step"] for r in steps] == [1, 2, 3, 4, 5, 6]
    for key in ["meta/static_loss", "meta/improvement", "meta/gate/copy", "meta/gate/update", "meta/gate/flush",
                "meta/alpha/layers.0.weight_hh"]:
        assert all(math.isfinite(r[key]) for r in steps), key
    valid = [r for r in recs if "valid/learned/ppl" in r]
    assert [r["step"] for r in valid] == [3, 6]
    assert "done: step 6, epoch 0, adaptive valid ppl" in (run / "train.log").read_text()
    assert f"checkpoints: {run / 'checkpoints'}/best.pt" in (run / "train.log").read_text()
    assert all(r["valid/tokens"] == 300 for r in valid)  # meta.valid_max_tokens caps the quick validation
    assert all(r["valid/static/ppl"] > 0 and r["valid/dyneval/ppl"] > 0 for r in valid)
    last = load_checkpoint(run / "checkpoints" / "last.pt")
    assert last["stage"] == "meta" and last["progress"]["step"] == 6
    assert set(last["dynamic_names"]) == {n for n in last["model"] if n.startswith("layers.")}
    assert set(last["grad_stats"]["v"]) == set(last["dynamic_names"])
    # φ moved away from its initialisation, the static weights did not (meta.train_static=false)
    assert float(last["meta_learner"]["gate_head.weight"].abs().sum()) > 0
    lm = load_checkpoint(ckpt)
    for n, t in lm["model"].items():
        assert torch.equal(last["model"][n], t), n


@pytest.mark.slow
def test_meta_training_resume_is_exact(lm_checkpoint, tmp_path):
    data, ckpt = lm_checkpoint
    over = overrides(data, ckpt, **{"model.dropout": 0.1})  # the stage-1 model config wins; no effect
    a, b = straight_and_resumed(over, tmp_path)
    assert a["progress"]["step"] == b["progress"]["step"] == 6
    for k in a["meta_learner"]:
        torch.testing.assert_close(a["meta_learner"][k], b["meta_learner"][k], rtol=0, atol=0, msg=k)
    for n in a["reading_state"]["fast"]:
        torch.testing.assert_close(a["reading_state"]["fast"][n], b["reading_state"]["fast"][n], rtol=0, atol=0)


@pytest.mark.slow
def test_a_nan_in_one_stream_is_caught_the_stream_reset_and_training_goes_on(lm_checkpoint, tmp_path):
    data, ckpt = lm_checkpoint
    seen = {}

    def inject(state, step):
        if step == 2:
            name = next(iter(state.fast))
            poisoned = state.fast[name].clone()
            poisoned[1].view(-1)[0] = float("nan")
            state.fast[name] = poisoned
        if step == 3:  # the window after the fault: stream 1 was reset to θ0
            seen["finite"] = all(bool(torch.isfinite(t).all()) for t in state.fast.values())
        return state

    run = tmp_path / "meta"
    result = train_meta(compose_config(overrides(data, ckpt)), run, on_window=inject)
    assert result["step"] == 6 and math.isfinite(result["valid/learned/loss"])
    assert seen["finite"]
    recs = [r for r in records(run) if "meta/skipped_updates" in r]
    assert [r["step"] for r in recs if r["meta/skipped_updates"] > 0] == [3]
    last = load_checkpoint(run / "checkpoints" / "last.pt")
    assert all(bool(torch.isfinite(t).all()) for t in last["meta_learner"].values())


def test_stage_meta_without_a_checkpoint_says_what_to_pass(tmp_path):
    with pytest.raises(ValueError, match="meta.lm_checkpoint"):
        train(compose_config(["stage=meta"]), tmp_path)


def test_stage_meta_with_dyneval_has_nothing_to_train(tmp_path):
    with pytest.raises(ValueError, match="nothing to train"):
        train(compose_config(["stage=meta", "rule=dyneval"]), tmp_path)
