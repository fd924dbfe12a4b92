"""Update rules are plug-ins (issue #24): a rule registered here, in the test, with its config node, is trained by
stage 2, saved, loaded and evaluated with no other file touched; the registry holds rules to their contract; old
checkpoints (the flat `meta` config) still read."""
from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
import torch
from hydra.core.config_store import ConfigStore
from torch import nn

from dynamic_helpers import random_stats, tiny_model
from dynlm.dynamic.registry import register_rule, rule_names, unregister_rule
from dynlm.dynamic.rules import build_rule, upgrade_config
from dynlm.eval.evaluate import evaluate
from dynlm.run.checkpoint import load_checkpoint, save_checkpoint
from dynlm.train import train
from eval_helpers import compose_eval, make_checkpoint
from hydra_helpers import compose_config, meta_overrides

TOY = "toy_scaled_sgd"


@dataclass
class ToyConfig:
    name: str = TOY
    eta: float = 0.5  # plain SGD's step size, before the learned scale


class ScaledSGD(nn.Module):
    """θ' = θ − exp(s) · η · g with one learned log-scale s: the smallest learned rule."""

    takes_factored_gradients = False

    def __init__(self, names, stats, *, eta: float):
        super().__init__()
        self.names, self.eta = list(names), eta
        self.log_scale = nn.Parameter(torch.zeros(()))

    def init_learner_state(self, fast):
        return {}

    def forward(self, fast, grads, theta0, seg_loss, learner_state):
        step = self.log_scale.exp() * self.eta
        return {n: fast[n] - step * grads[n] for n in self.names}, learner_state, {"log_scale": self.log_scale.detach()}


@pytest.fixture
def toy_rule():
    register_rule(TOY, config=ToyConfig, learned=True)(ScaledSGD)
    ConfigStore.instance().store(group="rule", name=TOY, node=ToyConfig)  # what conf/rule/<name>.yaml would add
    yield TOY
    unregister_rule(TOY)


@pytest.mark.slow
def test_a_rule_registered_in_a_test_trains_saves_loads_and_evaluates(toy_rule, lm_checkpoint, tmp_path):
    data, lm = lm_checkpoint
    over = meta_overrides(data, lm, **{"rule": toy_rule, "rule.eta": 0.3, "meta.batch_size": 2, "meta.seg_len": 4,
                                       "meta.window": 2, "meta.gradstat_tokens": 300, "meta.valid_max_tokens": 200,
                                       "meta.learner_lr": 0.1, "trainer.max_steps": 4, "trainer.eval_interval": 4})
    result = train(compose_config(over), tmp_path / "meta")
    assert math.isfinite(result["valid/learned/loss"])
    ckpt = load_checkpoint(tmp_path / "meta" / "checkpoints" / "last.pt")
    assert ckpt["config"]["rule"] == {"name": toy_rule, "eta": 0.3}  # its own node: no other rule's keys
    trained = ckpt["meta_learner"]["log_scale"]
    assert float(trained) != 0.0  # stage 2 moved φ

    cfg = compose_eval([f"checkpoint={tmp_path / 'meta' / 'checkpoints' / 'last.pt'}", "split=valid",
                        "eval.max_articles=1", "eval.progress_bar=false", "methods=[static,dyneval,learned]"])
    results = evaluate(cfg, tmp_path / "eval")
    assert list(results["methods"]) == ["static", "dyneval", "learned"]
    assert all(math.isfinite(results["methods"][m]["ppl"]) for m in results["methods"])
    # the loaded rule is the trained one: the same reading with φ back at its start gives another perplexity
    untrained = {k: torch.zeros_like(v) for k, v in ckpt["meta_learner"].items()}
    save_checkpoint({**{k: v for k, v in ckpt.items() if k != "format"}, "meta_learner": untrained},
                    tmp_path / "untrained.pt")
    cfg = compose_eval([f"checkpoint={tmp_path / 'untrained.pt'}", "split=valid", "eval.max_articles=1",
                        "eval.progress_bar=false", "methods=[learned]"])
    assert evaluate(cfg, tmp_path / "eval0")["methods"]["learned"]["ppl"] != results["methods"]["learned"]["ppl"]


def test_a_registered_rule_is_built_from_its_config_and_forgotten_when_unregistered(toy_rule):
    model = tiny_model()
    names = ["decoder_bias"]
    rule = build_rule({"name": toy_rule, "eta": 0.2}, names, random_stats(model, names))
    assert isinstance(rule, ScaledSGD) and rule.eta == 0.2
    assert toy_rule in rule_names(learned=True) and toy_rule not in rule_names(learned=False)
    unregister_rule(toy_rule)
    assert toy_rule not in rule_names()


def test_the_registry_refuses_a_rule_that_breaks_the_contract():
    class WithDefault(ScaledSGD):
        def __init__(self, names, stats, *, eta: float = 0.1):  # a default outside the config
            super().__init__(names, stats, eta=eta)

    class OtherKeys(ScaledSGD):
        def __init__(self, names, stats, *, lr: float):  # a keyword the config does not have
            super().__init__(names, stats, eta=lr)

    for cls, says in ((WithDefault, "defaults"), (OtherKeys, "keywords")):
        with pytest.raises(TypeError, match=says):
            register_rule(TOY, config=ToyConfig, learned=True)(cls)
        assert TOY not in rule_names()
    with pytest.raises(TypeError, match="name"):
        register_rule("another_name", config=ToyConfig, learned=True)(ScaledSGD)


OLD_META = {"name": "cheap", "lr": 0.0001, "lam": 0.001, "eps": 2e-05, "update_gate_init": 0.5, "hidden": 16,
            "tensor_emb": 4, "momentum": False, "momentum_init": 0.5, "meta_lr": 0.01, "meta_clip": 1.0,
            "seg_len": 5, "window": 100}


def test_an_old_flat_meta_config_upgrades_to_the_rule_node_and_renamed_keys():
    new = upgrade_config({"stage": "meta", "meta": dict(OLD_META)})
    assert new["rule"] == {"name": "cheap", "eta": 0.0001, "lam": 0.001, "eps": 2e-05}  # the cheap rule's keys only
    assert new["meta"] == {"learner_lr": 0.01, "clip": 1.0, "seg_len": 5, "window": 100}
    assert upgrade_config(new) == new  # today's layout comes back as it is
    no_name = upgrade_config({"meta": {k: v for k, v in OLD_META.items() if k != "name"}})
    assert no_name["rule"]["name"] == "gated" and no_name["rule"]["hidden"] == 16  # before meta.name: gated


def test_a_checkpoint_written_with_the_old_config_evaluates(toy_data_dir, tmp_path):
    """A stage-2 checkpoint whose config has the old flat `meta` (its rule's η as meta.lr) loads and evaluates."""
    path = make_checkpoint(toy_data_dir, tmp_path / "new.pt", stage="meta", overrides=["rule.eta=0.01"])
    ckpt = load_checkpoint(path)
    old_meta = {**{k: v for k, v in ckpt["config"]["meta"].items() if k not in ("learner_lr", "clip")},
                "name": "gated", "lr": 0.01, "meta_lr": 0.001, "meta_clip": 1.0,
                **{k: v for k, v in ckpt["config"]["rule"].items() if k not in ("name", "eta")}}
    old = {k: v for k, v in ckpt.items() if k != "format"}
    old["config"] = {k: v for k, v in ckpt["config"].items() if k != "rule"} | {"meta": old_meta}
    save_checkpoint(old, tmp_path / "old.pt")
    assert load_checkpoint(tmp_path / "old.pt")["config"]["rule"] == ckpt["config"]["rule"]
    runs = {}
    for name in ("new", "old"):
        cfg = compose_eval([f"checkpoint={tmp_path / f'{name}.pt'}", "split=valid", "eval.max_articles=1",
                            "eval.progress_bar=false", "methods=[static,dyneval,learned]", "eval.device=cpu"])
        runs[name] = evaluate(cfg, tmp_path / f"eval-{name}")
    assert runs["old"]["methods"]["learned"]["nll"] == runs["new"]["methods"]["learned"]["nll"]
    assert runs["old"]["dyneval"]["eta"] == 0.01  # dyneval starts where the learned rule did
