"""Gradient statistics are measured once per stage-1 checkpoint: stage 2 and evaluation share them."""
import pytest
import torch

from dynlm.eval.evaluate import evaluate
from dynlm.run.checkpoint import load_checkpoint
from dynlm.train import train
from eval_helpers import compose_eval
from hydra_helpers import compose_config, meta_overrides, train_tiny_lm

# Settings no other test uses, so that the session's cache starts without them.
STATS = {"meta.batch_size": 3, "meta.seg_len": 4, "meta.gradstat_tokens": 604, "meta.gradstat_streams": 7}


@pytest.mark.slow
def test_stage2_measures_once_and_evaluation_reuses_its_statistics(toy_data_dir, tmp_path, capsys):
    lm = train_tiny_lm(toy_data_dir, tmp_path / "lm", **{"trainer.max_steps": 4, "trainer.eval_interval": 4})
    over = meta_overrides(toy_data_dir, lm, **STATS, **{"meta.window": 2, "trainer.max_steps": 1,
                                                       "trainer.eval_interval": 1, "meta.valid_max_tokens": 50})
    train(compose_config(over), tmp_path / "meta1")
    assert "measuring them on 604 train tokens" in capsys.readouterr().out
    train(compose_config(over), tmp_path / "meta2")
    out = capsys.readouterr().out
    assert "measuring" not in out and "from the cache" in out
    a, b = (load_checkpoint(tmp_path / m / "checkpoints" / "last.pt")["grad_stats"] for m in ("meta1", "meta2"))
    assert a["tokens"] == b["tokens"] >= 604
    assert all(torch.equal(a["v"][n], b["v"][n]) for n in a["v"])

    cfg = compose_eval([f"checkpoint={lm}", "split=valid", "methods=[static,dyneval]", "eval.max_articles=1",
                        "eval.gradstat_tokens=604", "eval.gradstat_streams=7", "eval.seg_len=4",
                        "eval.dynamic=[layers.*]", "eval.progress_bar=false"])
    results = evaluate(cfg, tmp_path / "eval")
    assert results["grad_stats"] == {"source": "cached", "tokens": a["tokens"]}
    assert "measuring" not in capsys.readouterr().out
    # the measurement covered every parameter: evaluating all of them (Krause's default) measures nothing either,
    # and the LSTM-only statistics are those of every parameter, restricted (decay_norm over the LSTM tensors)
    every = evaluate(compose_eval([f"checkpoint={lm}", "split=valid", "methods=[static,dyneval]",
                                   "eval.max_articles=1", "eval.gradstat_tokens=604", "eval.gradstat_streams=7",
                                   "eval.seg_len=4", "eval.progress_bar=false"]), tmp_path / "eval-all")
    assert every["grad_stats"] == {"source": "cached", "tokens": a["tokens"]}
    assert "measuring" not in capsys.readouterr().out
    assert set(a["v"]) == {n for n in a["v"] if n.startswith("layers.")}  # stage 2 stored its own set
