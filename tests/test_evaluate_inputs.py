"""Bad input fails with a clear message before any long work (checkpoints built without training)."""
import shutil

import pytest
import torch
from hydra.errors import ConfigCompositionException

import dynlm.eval.evaluate as evaluate_module
from dynlm.eval.evaluate import check_static_weights, evaluate
from dynlm.eval.inputs import EvalConfigError, load_inputs
from dynlm.run.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from eval_helpers import compose_eval, make_checkpoint


@pytest.fixture(scope="module")
def toy_ckpts(toy_data_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpts")
    return {
        "lm": make_checkpoint(toy_data_dir, root / "lm.pt", stage="lm"),
        "meta": make_checkpoint(toy_data_dir, root / "meta.pt", stage="meta"),
    }


@pytest.fixture
def no_long_work(monkeypatch):
    """Any gradient-statistics measurement or model run fails the test: errors must come before."""
    def boom(*args, **kwargs):
        raise AssertionError("long work started before the input was checked")

    monkeypatch.setattr(evaluate_module, "ensure_grad_stats", boom)
    monkeypatch.setattr(evaluate_module, "run_methods", boom)


def run(overrides, tmp_path):
    out = tmp_path / "eval"
    try:
        return evaluate(compose_eval(overrides), out)
    finally:
        assert not (out / "results.json").exists()


def test_unknown_method(toy_ckpts, tmp_path, no_long_work):
    with pytest.raises(EvalConfigError, match=r"unknown method\(s\) \['foo'\].*static.*dyneval.*learned"):
        run([f"checkpoint={toy_ckpts['meta']}", "methods=[static,foo]"], tmp_path)


def test_missing_checkpoint(tmp_path, no_long_work):
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        run([f"checkpoint={tmp_path / 'nope.pt'}"], tmp_path)
    with pytest.raises(EvalConfigError, match="checkpoint=PATH"):
        run([], tmp_path)


def test_learned_on_a_stage1_checkpoint_says_what_to_do(toy_ckpts, tmp_path, no_long_work):
    with pytest.raises(EvalConfigError, match=r"without a learned rule.*stage=meta.*methods=\[static,dyneval\]"):
        run([f"checkpoint={toy_ckpts['lm']}", "methods=[static,learned]"], tmp_path)


def test_data_with_another_vocabulary(toy_ckpts, toy_data_dir, tmp_path, no_long_work):
    other = tmp_path / "other"
    shutil.copytree(toy_data_dir, other)
    with open(other / "train.txt", "a", encoding="utf-8") as f:
        f.write(" brandnewword \n \n")
    with pytest.raises(CheckpointError, match=r"vocabulary of \d+ but the data gives"):
        run([f"checkpoint={toy_ckpts['lm']}", f"data.dir={other}", "methods=[static]"], tmp_path)


def test_model_config_that_does_not_match_the_weights(toy_ckpts, tmp_path, no_long_work):
    ckpt = load_checkpoint(toy_ckpts["lm"])
    ckpt["config"]["model"]["hidden_size"] += 1
    bad = save_checkpoint({k: v for k, v in ckpt.items() if k != "format"}, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match="does not match the model built from the config"):
        run([f"checkpoint={bad}"], tmp_path)
    with pytest.raises(ConfigCompositionException):  # the model is the checkpoint's: no model keys here
        compose_eval([f"checkpoint={bad}", "model.hidden_size=8"])


def test_meta_learner_that_does_not_match_its_config(toy_ckpts, tmp_path, no_long_work):
    ckpt = load_checkpoint(toy_ckpts["meta"])
    ckpt["config"]["rule"]["hidden"] = 7
    bad = save_checkpoint({k: v for k, v in ckpt.items() if k != "format"}, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match="learned rule .* does not match"):
        run([f"checkpoint={bad}"], tmp_path)


@pytest.mark.parametrize("override,message", [
    ("eval.html_articles=[99]", "not among the 3 evaluated articles"),
    ("eval.position_bins=0", "position_bins=0 must be >= 1"),
    ("split=dev", "unknown split"),
    ("methods=[static,static]", "twice"),
])
def test_bad_options(toy_ckpts, tmp_path, no_long_work, override, message):
    with pytest.raises(EvalConfigError, match=message):
        run([f"checkpoint={toy_ckpts['meta']}", override], tmp_path)


def test_data_settings_come_from_the_checkpoint(toy_ckpts, toy_data_dir):
    prep = load_inputs(compose_eval([f"checkpoint={toy_ckpts['meta']}", "split=valid"]))  # no data.dir given
    assert prep.corpus.source == str(toy_data_dir.resolve())
    assert prep.methods == ["static", "dyneval", "learned"] and prep.stats is not None
    assert load_inputs(compose_eval([f"checkpoint={toy_ckpts['lm']}"])).methods == ["static", "dyneval"]  # default
    prep = load_inputs(compose_eval([f"checkpoint={toy_ckpts['lm']}", "methods=[dyneval]"]))
    assert prep.methods == ["static", "dyneval"]  # static always runs: the reference of every gain
    assert prep.needs_train and "train" in prep.corpus.splits


def test_static_weight_guard_catches_a_change(toy_ckpts):
    prep = load_inputs(compose_eval([f"checkpoint={toy_ckpts['lm']}", "methods=[static]"]))
    check_static_weights(prep)
    with torch.no_grad():
        prep.model.decoder_bias[0] += 1.0
    with pytest.raises(RuntimeError, match="decoder_bias changed"):
        check_static_weights(prep)


def test_eval_dynamic_on_a_stage2_checkpoint_is_refused_only_beside_the_learned_method(toy_ckpts, tmp_path,
                                                                                      no_long_work):
    with pytest.raises(EvalConfigError, match=r"with the learned method dyneval adapts the same ones.*"
                                              r"methods=\[static,dyneval\]"):
        run([f"checkpoint={toy_ckpts['meta']}", "eval.dynamic=[*]"], tmp_path)


def test_every_parameter_dyneval_on_a_stage2_checkpoint_measures_statistics_for_them(toy_ckpts, tmp_path):
    """A θ0 trained jointly with a restricted adapted set, read by Krause's every-parameter dyneval: the statistics
    the checkpoint stores cover its own set only, so those of every parameter are measured."""
    ckpt = load_checkpoint(toy_ckpts["meta"])
    every = list(ckpt["model"])
    assert set(ckpt["dynamic_names"]) < set(every)
    common = [f"checkpoint={toy_ckpts['meta']}", "methods=[static,dyneval]", "eval.progress_bar=false",
              "eval.max_articles=1", "eval.gradstat_tokens=100", f"data.cache_dir={tmp_path / 'cache'}"]
    own = evaluate(compose_eval(common), tmp_path / "own")
    assert own["dyneval"]["adapted"] == ckpt["dynamic_names"] and own["grad_stats"]["source"] == "checkpoint"
    wide = evaluate(compose_eval([*common, "eval.dynamic=[*]"]), tmp_path / "wide")
    assert wide["dyneval"]["adapted"] == every and wide["grad_stats"]["source"] == "measured"
    assert wide["methods"]["dyneval"]["nll"] != own["methods"]["dyneval"]["nll"]
