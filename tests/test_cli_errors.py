"""The scripts' command line (issue #13, items 5, 8, 10): unknown keys fail with the closest key however they
were given, dynlm's own errors print as one line, and `--help` lists what each script takes.

Every case here fails before any data is read, so each run is a few seconds (mostly Python's imports)."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _run(script, *args, **env):
    full_env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    full_env.update({"WANDB_MODE": "disabled", **env})
    return subprocess.run([sys.executable, f"scripts/{script}.py", *map(str, args)], cwd=REPO, env=full_env,
                          capture_output=True, text=True, timeout=300)


def _one_line_error(proc) -> str:
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    return lines[0]


# item 5: unknown keys --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("prefix", ["", "+", "++"])
def test_an_unknown_key_fails_with_the_closest_key_however_it_is_given(tmp_path, prefix):
    run = tmp_path / "run"
    proc = _run("train", f"{prefix}trainer.max_stepz=5", "model=tiny", f"hydra.run.dir={run}")
    msg = _one_line_error(proc)
    assert "trainer.max_stepz" in msg and "did you mean trainer.max_steps?" in msg
    assert "+trainer.max_stepz" not in proc.stderr  # no hint that would start a run ignoring the key
    assert not run.exists()  # nothing started: no run folder, no config.yaml recording the key


def test_a_config_of_ones_own_is_checked_against_the_schema_too(tmp_path):
    """A primary config outside conf/ (no schema in its defaults) can hold any key: the composed config is checked."""
    (tmp_path / "mine.yaml").write_text("stage: lm\ntrainer:\n  max_stepz: 5\n")
    run = tmp_path / "run"
    proc = _run("train", "--config-dir", tmp_path, "--config-name", "mine", f"hydra.run.dir={run}")
    assert "did you mean trainer.max_steps?" in _one_line_error(proc)
    assert not (run / "config.yaml").exists()


@pytest.mark.parametrize("script, args, says", [
    ("train", ["meta.lr=5e-5"], "meta.lr was renamed rule.eta: use rule.eta=5e-5"),
    ("train", ["meta.meta_lr=0.01"], "meta.meta_lr was renamed meta.learner_lr: use meta.learner_lr=0.01"),
    ("train", ["meta=cheap"], "meta=cheap is now rule=cheap"),
    ("train", ["rule=cheap", "rule.momentum=true"], "rule.momentum has no effect with rule=cheap: it is a key of "
                                                    "rule=gated"),
    ("train", ["rule=nope"], "the rule group has no option 'nope'. Choose one of: cheap, dyneval, gated"),
    ("evaluate", ["eval.dyneval_lr=0.001"], "eval.dyneval_lr was renamed eval.dyneval_eta"),
    ("evaluate", ["methods=[static,meta]"], "the method meta is now called learned"),
])
def test_an_old_name_or_another_rules_key_fails_with_what_to_write_instead(tmp_path, script, args, says):
    """An old command line never runs with its keys meaning something else (`meta.lr` was Krause's η)."""
    run = tmp_path / "run"
    assert says in _one_line_error(_run(script, *args, f"hydra.run.dir={run}"))
    assert not run.exists() or args[0].startswith("methods")  # a key fails before Hydra makes the run folder


def test_evaluate_rejects_the_training_groups_by_name(tmp_path):
    proc = _run("evaluate", "model=tiny", f"hydra.run.dir={tmp_path / 'run'}")
    assert "unknown config key model" in _one_line_error(proc)


# item 8: one message, no traceback ----------------------------------------------------------------------------------

def test_a_text_file_as_checkpoint_says_what_it_is(tmp_path):
    text = tmp_path / "notes.pt"
    text.write_text("hello, this is not a model\n")
    msg = _one_line_error(_run("evaluate", f"checkpoint={text}", f"hydra.run.dir={tmp_path / 'run'}"))
    assert f"{text} is not a dynlm checkpoint: it is a text file" in msg
    assert "hello, this is not a model" in msg and "scripts/train.py" in msg  # what it is, and the fix
    assert "101" not in msg


def test_a_missing_data_folder_is_one_line_and_its_traceback_is_behind_hydra_full_error(tmp_path):
    args = ["model=tiny", f"data.dir={tmp_path / 'nowhere'}", f"hydra.run.dir={tmp_path / 'run'}"]
    msg = _one_line_error(_run("train", *args))
    assert "nowhere does not exist" in msg and "data.dir" in msg
    full = _run("train", *args, HYDRA_FULL_ERROR="1")
    assert full.returncode == 1
    assert "Traceback" in full.stderr and "DataError" in full.stderr


def test_only_dynlm_errors_lose_their_traceback():
    from dynlm.config import DynlmError
    from dynlm.run.cli import user_errors

    with pytest.raises(SystemExit) as exit_:
        with user_errors():
            raise DynlmError("a user's mistake")
    assert exit_.value.code == 1
    with pytest.raises(KeyError):  # a bug: its traceback stays
        with user_errors():
            raise KeyError("a bug")


# item 10: --help ----------------------------------------------------------------------------------------------------

def _help(script, *args):
    proc = _run(script, *args, "--help")
    assert proc.returncode == 0, proc.stderr[-2000:]
    head, _, tail = proc.stdout.partition("\nKeys")
    groups = dict(re.findall(r"^  (\w+)=(\S+)$", head, re.M))
    keys = dict(re.findall(r"^  ([\w.]+=\S*) *(.*)$", tail, re.M))
    return proc.stdout, groups, keys


def test_train_help_lists_its_groups_without_schema_names_and_describes_every_key():
    out, groups, keys = _help("train", "model=tiny")
    assert set(groups) == {"data", "model", "optim", "trainer", "logger", "rule"}
    assert groups["rule"] == "cheap|dyneval|gated*"
    assert groups["model"] == "awd_lstm|small|tiny*"  # options, the current one marked
    assert "base_" not in out
    assert keys["model.hidden_size=32"]  # the current value, after the override
    assert "training steps" in keys["trainer.max_steps=null"]
    assert keys["rule.hidden=16"] and keys["rule.eta=5e-05"]  # the chosen rule's keys, inherited ones described
    assert [k for k, doc in keys.items() if not doc] == []  # a new key without a comment shows up here


def test_evaluate_help_lists_only_what_evaluate_takes():
    out, groups, keys = _help("evaluate")
    assert set(groups) == {"logger"}
    assert "base_" not in out
    assert not [k for k in keys if k.split(".")[0] in ("model", "optim", "trainer", "meta", "rule")]
    assert "scripts/train.py" in keys["checkpoint=null"]
    assert [k for k, doc in keys.items() if not doc] == []


def test_field_docs_read_the_comment_on_the_line_else_the_lines_above():
    from dynlm.config import TrainerConfig
    from dynlm.run.cli import field_docs

    docs = field_docs(TrainerConfig)
    assert docs["device"] == "auto | cpu | cuda | cuda:N"  # on its line
    assert docs["overwrite"].startswith("Start over in a run folder that already holds a run")  # above, 1st sentence
