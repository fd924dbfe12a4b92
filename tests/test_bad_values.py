"""Non-finite or out-of-range hyperparameters fail before any work; a diverging stage 2 stops (issue #13, item 6)."""
import math

import pytest
import torch
from hydra.errors import ConfigCompositionException as HydraCompositionError

from dynlm.config import ConfigValueError, check_choice_keys
from dynlm.run.checkpoint import load_checkpoint
from dynlm.train import train
from dynlm.train.meta_trainer import train_meta
from hydra_helpers import compose_config, meta_overrides, tiny_lm_overrides, train_tiny_lm


@pytest.mark.parametrize("override", ["rule.eta=inf", "optim.lr=nan", "rule.eps=0", "rule.update_gate_init=1.5",
                                      "meta.learner_lr=-0.1", "trainer.clip=-1"])
def test_bad_hyperparameters_fail_before_any_work(toy_data_dir, tmp_path, override):
    key = override.split("=")[0]
    with pytest.raises(ConfigValueError, match=key.replace(".", r"\.")):
        train(compose_config(tiny_lm_overrides(toy_data_dir) + [override]), tmp_path / "run")
    assert not (tmp_path / "run").exists()  # nothing was written


@pytest.mark.parametrize("overrides, key", [
    (["meta.es_pairs=3"], "meta.es_pairs"),
    (["meta.ewc=100"], "meta.ewc"),
])
def test_a_stage2_key_that_the_chosen_estimator_does_not_read_fails_before_any_work(toy_data_dir, tmp_path, overrides,
                                                                                    key):
    """Every config key has an effect: one that only another estimator or θ0 refinement reads is refused, with the
    choice that reads it, rather than silently ignored."""
    cfg = compose_config(meta_overrides(toy_data_dir, tmp_path / "no-lm.pt") + overrides)
    with pytest.raises(ConfigValueError, match=key.replace(".", r"\.") + r"=.*has no effect.*read only with"):
        train(cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists()
    # with the choice that reads it, the same value passes the check
    choice = {"meta.es_pairs": "meta.estimator=es", "meta.ewc": "meta.train_static=true"}[key]
    check_choice_keys(compose_config(meta_overrides(toy_data_dir, tmp_path / "no-lm.pt") + overrides + [choice]))


@pytest.mark.parametrize("key", ["rule.momentum=true", "rule.hidden=32"])
def test_a_key_of_another_rule_is_not_in_the_chosen_rules_config(key):
    """A rule's config node holds its own keys only: the gated rule's under rule=cheap do not compose."""
    compose_config([key])  # the gated rule (the default) has it
    with pytest.raises(HydraCompositionError, match=key.split("=")[0].replace(".", r"\.")):
        compose_config(["rule=cheap", key])


def test_a_stage2_that_skips_every_window_stops_and_names_the_last_good_checkpoint(toy_data_dir, tmp_path):
    lm = train_tiny_lm(toy_data_dir, tmp_path / "lm", **{"trainer.max_steps": 4, "trainer.eval_interval": 4})
    over = meta_overrides(toy_data_dir, lm, **{
        "meta.batch_size": 2, "meta.seg_len": 4, "meta.window": 2, "meta.gradstat_tokens": 200,
        "meta.valid_max_tokens": 60, "trainer.max_steps": 20, "trainer.eval_interval": 2,
        "meta.max_skipped_windows": 3})

    def poison_from_step_2(state, step):
        if step >= 2:
            name = next(iter(state.fast))
            state.fast[name] = state.fast[name] * float("nan")
        return state

    with pytest.raises(FloatingPointError, match=r"last 3 windows \(to step 5\).*checkpoints/last.pt.*resume"):
        train_meta(compose_config(over), tmp_path / "meta", on_window=poison_from_step_2)
    last = load_checkpoint(tmp_path / "meta" / "checkpoints" / "last.pt")
    assert last["progress"]["step"] == 4  # the validation before the divergence: still there, still finite
    assert all(bool(torch.isfinite(t).all()) for t in last["meta_learner"].values())
    assert math.isfinite(float(last["progress"]["best_valid_loss"]))
