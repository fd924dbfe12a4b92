"""The README's recipes are the experiment group (conf/experiment/): each composes, each is the recipe that made its
Results row, and scripts/reproduce_small.sh runs them rather than spelling their settings out again."""
from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from hydra_helpers import compose_config, group_options

REPO = Path(__file__).resolve().parents[1]
EXPERIMENTS = [o for g, o in group_options() if g == "experiment"]
RESULTS = REPO / "docs" / "results" / "small-adam"


def test_the_readme_recipes_are_experiments():
    assert {"small_adam_lm", "small_cheap_es"} <= set(EXPERIMENTS)


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_an_experiment_composes_through_the_script(name):
    proc = subprocess.run([sys.executable, "scripts/train.py", f"+experiment={name}", "--cfg", "job"], cwd=REPO,
                          capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert OmegaConf.create(proc.stdout) == compose_config([f"+experiment={name}"])


def test_the_stage_1_experiment_is_the_readme_command():
    """README "Stage 1": the command the base model of the Results was trained with."""
    readme = ["model=small", "optim=adam", "optim.decay=0.5", "data.batch_size=10", "data.meta_holdout_articles=60",
              "trainer.max_epochs=null", "trainer.max_time=4200", "trainer.valid_max_tokens=40000",
              "trainer.eval_interval=250"]
    assert compose_config(["+experiment=small_adam_lm"]) == compose_config(readme)


def test_the_joint_experiment_is_the_joint_recipe():
    """Issue #25's joint training: θ0 with dyneval in the loop, on the train text small_adam_lm read, for 2 hours."""
    recipe = ["stage=meta", "model=small", "rule=dyneval", "rule.eta=7e-5", "rule.lam=0.001",
              "meta.estimator=first_order", "meta.train_static=true", "meta.dynamic=[*]", "meta.split=train",
              "meta.batch_size=10", "meta.seg_len=5", "meta.window=14", "meta.static_lr=3e-4", "meta.clip=0.25",
              "meta.valid_articles=2", "meta.valid_max_tokens=4000", "trainer.eval_interval=200",
              "data.meta_holdout_articles=60", "trainer.max_epochs=null", "trainer.max_time=7200"]
    assert compose_config(["+experiment=small_joint"]) == compose_config(recipe)
    assert compose_config(["+experiment=small_joint"]).meta.lm_checkpoint is None  # from scratch unless given


def test_the_stage_1_experiment_is_the_recorded_run():
    """The config the Results' stage-1 checkpoint saved (an evaluation's results.json copies it), but for what the
    command line gave (data folder, device, progress bar): a recipe that stopped earlier, e.g. after the default
    one epoch, would not be the run that made the Results."""
    saved = json.loads((RESULTS / "static-test-results.json").read_text(encoding="utf-8"))["checkpoint_config"]
    given = [f"data.dir={saved['data']['dir']}", "trainer.device=cpu", "trainer.progress_bar=false"]
    cfg = OmegaConf.to_container(compose_config(["+experiment=small_adam_lm"] + given))
    for section in ("trainer", "optim", "data", "model"):
        assert cfg[section] == saved[section], section


def test_the_learned_row_experiment_is_the_recorded_run():
    """The config stage 2 saved for the best learned row, but for what the command line gives (checkpoint, data
    folder, device, progress bar) and what stage 2 takes from the checkpoint (model, data) or resolves (split)."""
    from dynlm.dynamic.rules import upgrade_config

    # written before the rule had a node of its own: read as a checkpoint's config is
    saved_text = (RESULTS / "meta-cheap-es" / "stage2-config.yaml").read_text(encoding="utf-8")
    saved = upgrade_config(yaml.safe_load(saved_text))
    given = [f"meta.lm_checkpoint={saved['meta']['lm_checkpoint']}", "trainer.device=cpu",
             "trainer.progress_bar=false", "meta.split=heldout"]
    cfg = OmegaConf.to_container(compose_config(["+experiment=small_cheap_es"] + given))
    # keys added since (the update directions, the statistics' refresh) are at their defaults: the run as it was
    defaults = OmegaConf.to_container(compose_config(["rule=cheap"]))
    for section in ("stage", "rule", "meta", "trainer", "optim", "logger"):
        if not isinstance(saved[section], dict):
            assert cfg[section] == saved[section], section
            continue
        added = {k: v for k, v in cfg[section].items() if k not in saved[section]}
        assert added == {k: defaults[section][k] for k in added}, section
        assert {k: v for k, v in cfg[section].items() if k in saved[section]} == saved[section], section


def _train_commands(script: str):
    """The overrides of each `scripts/train.py` call of a bash script (continuation lines joined)."""
    text = script.replace("\\\n", " ")
    return [shlex.split(line.split("scripts/train.py", 1)[1]) for line in text.splitlines()
            if "scripts/train.py" in line and not line.lstrip().startswith("#")]


# What reproduce_small.sh may set besides an experiment: where things are, the replay by step count, the tuned
# dyneval the learned rule starts from (found by its grid), and the script's knobs.
RUN_KEYS = {"model", "data.dir", "data.meta_holdout_articles", "meta.lm_checkpoint", "rule.eta", "rule.lam",
            "trainer.max_steps", "trainer.max_epochs", "trainer.max_time", "trainer.progress_bar", "hydra.run.dir"}


def test_reproduce_small_runs_the_experiments():
    commands = _train_commands((REPO / "scripts" / "reproduce_small.sh").read_text(encoding="utf-8"))
    assert [c[0] for c in commands] == ["+experiment=small_adam_lm", "+experiment=small_cheap_es"]
    for command in commands:
        keys = {a.split("=", 1)[0] for a in command[1:] if "=" in a}
        assert keys <= RUN_KEYS, keys - RUN_KEYS
        # and the user's extra overrides (LM_ARGS, META_ARGS)
        assert all("=" in a or re.fullmatch(r"\$\{\w+\[@\]\}", a) for a in command[1:]), command
