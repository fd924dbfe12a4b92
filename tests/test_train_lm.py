"""Stage 1: the run folder, validation, NT-ASGD, exact resume, clear failures."""
import math

import pytest
import torch

from dynlm.run.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from dynlm.train import train
from dynlm.train.ntasgd import WeightAverager
from hydra_helpers import compose_config, records, tiny_lm_overrides


def test_tiny_run_writes_the_run_folder(wikitext2_slice_dir, tmp_path):
    run = tmp_path / "run"
    result = train(compose_config(tiny_lm_overrides(wikitext2_slice_dir)), run)
    for f in ["config.yaml", "config.json", "metrics.jsonl", "checkpoints/last.pt", "checkpoints/best.pt"]:
        assert (run / f).is_file(), f
    assert not list((run / "checkpoints").glob("*.tmp"))
    recs = records(run)
    valid = [r for r in recs if "valid/ppl" in r]
    train_recs = [r for r in recs if "train/loss" in r]
    assert [r["step"] for r in valid] == [6, 12]
    assert [r["step"] for r in train_recs] == [1, 3, 6, 9, 12]  # step 1 too: the starting loss at once
    assert all(math.isfinite(r["train/loss"]) and r["train/tokens_per_s"] > 0 for r in train_recs)
    ckpt = load_checkpoint(run / "checkpoints" / "last.pt")
    assert ckpt["progress"]["step"] == 12 and ckpt["stage"] == "lm"
    assert ckpt["config"]["model"]["name"] == "tiny"
    vocab = ckpt["model"]["embedding.weight"].shape[0]
    assert valid[-1]["valid/ppl"] < vocab / 4  # well below a uniform guess
    assert result["valid/ppl"] == pytest.approx(valid[-1]["valid/ppl"])


def test_valid_max_tokens_reads_the_start_of_valid(wikitext2_slice_dir, tmp_path):
    from dynlm.data import load_corpus
    from dynlm.run.from_checkpoint import load_lm
    from dynlm.train.lm_trainer import evaluate_loss

    run = tmp_path / "run"
    train(compose_config(tiny_lm_overrides(wikitext2_slice_dir, **{"trainer.valid_max_tokens": 500})), run)
    valid = [r for r in records(run) if "valid/ppl" in r]
    assert [r["valid/tokens"] for r in valid] == [500, 500]
    # the logged number is the loss of the first 500 tokens, read by the same static reading as evaluate.py
    ckpt_cfg = compose_config(tiny_lm_overrides(wikitext2_slice_dir))
    corpus = load_corpus(ckpt_cfg.data, splits=("valid",))
    model = load_lm(run / "checkpoints" / "last.pt", torch.device("cpu"))[0]
    first = evaluate_loss(model, corpus, "valid", 64, max_tokens=500)
    assert valid[-1]["valid/loss"] == pytest.approx(first, rel=1e-6)
    assert first != pytest.approx(evaluate_loss(model, corpus, "valid", 64), rel=1e-3)


def test_resume_ends_with_the_same_weights_as_an_uninterrupted_run(wikitext2_slice_dir, tmp_path):
    over = tiny_lm_overrides(wikitext2_slice_dir, **{"optim.nonmono": 0, "trainer.eval_interval": 4})
    full = tmp_path / "full"
    train(compose_config(over), full)
    split = tmp_path / "split"
    stopped = train(compose_config(over + ["trainer.stop_after_steps=5"]), split)
    assert stopped["stopped"] == 1.0
    assert load_checkpoint(split / "checkpoints" / "last.pt")["progress"]["step"] == 5
    train(compose_config(over + ["trainer.resume=true"]), split)
    a = load_checkpoint(full / "checkpoints" / "last.pt")
    b = load_checkpoint(split / "checkpoints" / "last.pt")
    assert a["progress"]["step"] == b["progress"]["step"] == 12
    for key in ["train_weights", "model"]:
        for n in a[key]:
            torch.testing.assert_close(a[key][n], b[key][n], rtol=0, atol=0, msg=f"{key}/{n}")
    assert (a["averager"]["average"] is None) == (b["averager"]["average"] is None)


def test_resume_true_without_a_checkpoint_says_what_to_do(wikitext2_slice_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match="hydra.run.dir"):
        train(compose_config(tiny_lm_overrides(wikitext2_slice_dir, **{"trainer.resume": "true"})), tmp_path / "r")


def test_resume_without_last_pt_but_with_best_pt_names_best_pt(wikitext2_slice_dir, tmp_path):
    """Killed between the two writes of the first validation: best.pt is whole and the message says so (the
    folder must not be overwritten)."""
    run = tmp_path / "run"
    over = tiny_lm_overrides(wikitext2_slice_dir, **{"trainer.max_steps": 6})
    train(compose_config(over), run)
    (run / "checkpoints" / "last.pt").unlink()
    best = run / "checkpoints" / "best.pt"
    with pytest.raises(FileNotFoundError, match=f"resume from it with trainer.resume={best}") as err:
        train(compose_config(over + ["trainer.resume=true"]), run)
    assert "overwrite" not in str(err.value)


def test_nan_loss_stops_with_a_clear_error_and_keeps_the_last_checkpoint(wikitext2_slice_dir, tmp_path):
    run = tmp_path / "run"
    over = tiny_lm_overrides(wikitext2_slice_dir)
    train(compose_config(over + ["trainer.max_steps=6"]), run)
    before = (run / "checkpoints" / "last.pt").read_bytes()
    with pytest.raises(FloatingPointError, match="last good checkpoint"):
        train(compose_config(over + ["trainer.resume=true", "optim.lr=1e30", "trainer.clip=0"]), run)
    assert (run / "checkpoints" / "last.pt").read_bytes() == before


def test_checkpoint_errors_are_readable(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "nope.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="is not a dynlm checkpoint: it is a text file"):
        load_checkpoint(tmp_path / "junk.pt")
    torch.save({"weights": 1}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not a dynlm checkpoint"):
        load_checkpoint(tmp_path / "other.pt")
    save_checkpoint({"x": torch.ones(2)}, tmp_path / "ok.pt")
    assert load_checkpoint(tmp_path / "ok.pt")["x"].sum() == 2


def test_non_monotone_trigger_and_running_average():
    avg = WeightAverager(nonmono=2)
    assert [avg.should_trigger(x) for x in [5.0, 4.0, 3.0, 3.5, 4.5]] == [False, False, False, False, True]
    model = torch.nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(1.0)
    avg.start(model)
    for v in [2.0, 3.0]:
        with torch.no_grad():
            model.weight.fill_(v)
        avg.update(model)
    torch.testing.assert_close(avg.average["weight"], torch.full((1, 2), 2.0))


def test_plateau_decay_waits_for_patience_then_decays_and_round_trips():
    from dynlm.train.plateau import PlateauDecay
    s = PlateauDecay(decay=0.5, patience=2)
    assert [s.update(v) for v in [3.0, 2.0, 2.5, 2.1]] == [False, False, False, True]  # 2 in a row without a best
    assert s.scale == 0.5 and s.evals_without_best == 0
    assert [s.update(v) for v in [2.2, 1.9, 2.0]] == [False, False, False]  # a new best resets the count
    restored = PlateauDecay(decay=0.5, patience=2)
    restored.load_state_dict(s.state_dict())
    assert restored.update(2.0) and restored.scale == 0.25
    constant = PlateauDecay(decay=1.0, patience=1)
    assert not any(constant.update(v) for v in [1.0, 2.0, 3.0]) and constant.scale == 1.0


def test_plateau_decay_lowers_the_logged_and_used_learning_rate(wikitext2_slice_dir, tmp_path):
    # patience 1 with a loss that cannot improve twice in a row at lr 10: the rate halves at least once
    over = tiny_lm_overrides(wikitext2_slice_dir, **{"optim.decay": 0.5, "optim.decay_patience": 1,
                                                     "trainer.eval_interval": 2, "trainer.log_interval": 2})
    train(compose_config(over), tmp_path / "run")
    lrs = [r["train/lr"] for r in records(tmp_path / "run") if "train/lr" in r]
    ckpt = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    scale = ckpt["lr_schedule"][0]
    assert lrs[0] == 20 and lrs[-1] < 20 and scale <= lrs[-1] / 20  # the final validation may decay once more
    # the optimiser used the decayed rate (scaled by the last sequence's length / bptt, at most 2x)
    assert ckpt["optimizer"]["param_groups"][0]["lr"] <= 2 * lrs[-1]
    assert "learning rate x0.5" in (tmp_path / "run" / "train.log").read_text()
    with pytest.raises(ValueError, match="optim.decay=1.5"):
        train(compose_config(over + ["optim.decay=1.5"]), tmp_path / "bad")
