"""Every failure is one clear line (issue #26 items 3, 5, 6, 7; issue #24): a group option that is a schema node
or a typo, a value of the wrong type, a run folder that cannot be written, a checkpoint write that fails, Ctrl-C,
and a user error under torchrun with restarts. Exit status non-zero, one `error:` line, nothing saved changed."""
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dynlm import dist
from dynlm.run.checkpoint import CheckpointWriteError, load_checkpoint, save_checkpoint
from dynlm.run.setup import UnwritableRunFolderError, check_writable
from hydra_helpers import tiny_lm_overrides

REPO = Path(__file__).resolve().parents[1]


def _env(**extra):
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    env.update({"WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **extra})
    return env


def _train(*args, **env):
    return subprocess.run([sys.executable, "scripts/train.py", *map(str, args)], cwd=REPO, env=_env(**env),
                          capture_output=True, text=True, timeout=300)


def _one_line_error(proc, status=1) -> str:
    assert proc.returncode == status, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    return lines[0]


# issue #24: group options are the YAML files of conf/<group>/ -----------------------------------------------------

@pytest.mark.parametrize("option, says", [
    ("base_model", "model=base_model is the schema of the model group"),  # would train a full-size model
    ("smal", "did you mean model=small?"),
    ("tiny,smal", "did you mean model=small?"),  # each option of a sweep
])
def test_a_group_option_that_is_no_yaml_file_fails_with_the_real_choices(tmp_path, option, says):
    run = tmp_path / "run"
    msg = _one_line_error(_train("-m" if "," in option else "--cfg=job", f"model={option}", f"hydra.run.dir={run}"))
    assert says in msg and "awd_lstm, small, tiny" in msg
    assert "base_model" not in msg.split("Choose one of:")[1]
    assert not run.exists()


def test_a_group_option_chosen_in_a_config_of_ones_own_is_checked_too(tmp_path):
    """The composed choices are checked, however they were made (here a defaults list)."""
    (tmp_path / "mine.yaml").write_text("defaults:\n  - base_config\n  - model: base_model\n  - _self_\n")
    run = tmp_path / "run"
    proc = _train("--config-dir", REPO / "conf", "--config-dir", tmp_path, "--config-name", "mine",
                  f"hydra.run.dir={run}")
    assert "model=base_model is the schema of the model group" in _one_line_error(proc)
    assert not (run / "config.yaml").exists()


def test_a_new_group_is_checked_without_any_change_here(tmp_path):
    """A global group (an experiment's options set keys anywhere) is a group of the train script too."""
    from dynlm.config import Config, register_configs
    from dynlm.run.cli import check_overrides
    from dynlm.run.groups import GroupOptionError

    register_configs()
    (tmp_path / "experiment").mkdir()
    (tmp_path / "experiment" / "small_wt2.yaml").write_text("# @package _global_\ntrainer:\n  max_steps: 5\n")
    check_overrides(["+experiment=small_wt2"], Config, tmp_path)
    with pytest.raises(GroupOptionError, match=r"did you mean experiment=small_wt2\?.*Choose one of: small_wt2"):
        check_overrides(["+experiment=small_wt"], Config, tmp_path)


# item 6: a value of the wrong type ----------------------------------------------------------------------------------

@pytest.mark.parametrize("override, says", [
    ("trainer.max_steps=abc", "trainer.max_steps takes an integer or null, not 'abc'"),
    ("trainer.progress_bar=maybe", "trainer.progress_bar takes true or false"),
    ("model.dropout=[1,2]", "model.dropout takes a number"),
])
def test_a_value_of_the_wrong_type_is_one_line_naming_the_type(tmp_path, override, says):
    run = tmp_path / "run"
    assert says in _one_line_error(_train("model=tiny", override, f"hydra.run.dir={run}"))
    assert not run.exists()


# item 3: a run folder that cannot be written ------------------------------------------------------------------------

@pytest.mark.parametrize("layout, says", [
    ("run is a file", "is a file"),
    ("checkpoints is a file", "checkpoints is a file, where the run writes its checkpoints"),
    ("parent is a file", "cannot be created"),
])
def test_an_unwritable_run_folder_fails_before_any_work(toy_data_dir, tmp_path, layout, says):
    run = tmp_path / "run"
    if layout == "run is a file":
        run.write_text("kept")
        kept = run
    elif layout == "checkpoints is a file":
        run.mkdir()
        kept = run / "checkpoints"
        kept.write_text("kept")
    else:
        kept = tmp_path / "parent"
        kept.write_text("kept")
        run = kept / "run"
    proc = _train(*tiny_lm_overrides(toy_data_dir), f"hydra.run.dir={run}")
    msg = _one_line_error(proc)
    assert says in msg and "hydra.run.dir=" in msg
    assert kept.read_text() == "kept"
    assert not (run / "config.yaml").exists() if run.is_dir() else True


def test_train_itself_checks_the_folder_before_building_anything(toy_data_dir, tmp_path):
    from dynlm.train import train
    from hydra_helpers import compose_config

    (tmp_path / "checkpoints").write_text("kept")
    with pytest.raises(UnwritableRunFolderError, match="checkpoints is a file"):
        train(compose_config(tiny_lm_overrides(toy_data_dir)), tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoints"]  # no log, no config.yaml


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write a read-only folder")
def test_a_read_only_run_folder_is_refused(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run").chmod(0o500)
    try:
        with pytest.raises(UnwritableRunFolderError, match="is not writable"):
            check_writable(tmp_path / "run")
    finally:
        (tmp_path / "run").chmod(0o700)


@pytest.mark.parametrize("fails", ["mkdir", "mkstemp"])
def test_a_checkpoint_write_that_fails_on_the_folder_is_one_error_and_keeps_the_previous(tmp_path, monkeypatch,
                                                                                         fails):
    """Making the folder and the temporary file are guarded too (they were outside the guarded block)."""
    import dynlm.run.checkpoint as ckpt_module

    path = tmp_path / "checkpoints" / "last.pt"
    save_checkpoint({"progress": {"step": 1}}, path)

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(path.parent))

    if fails == "mkdir":
        monkeypatch.setattr(Path, "mkdir", denied)
    else:
        monkeypatch.setattr(ckpt_module.tempfile, "mkstemp", denied)
    with pytest.raises(CheckpointWriteError, match=r"no permission to write there.*previous .*last\.pt is intact.*"
                                                   r"Make .*checkpoints writable.*trainer\.resume=true"):
        save_checkpoint({"progress": {"step": 2}}, path)
    monkeypatch.undo()
    assert load_checkpoint(path)["progress"]["step"] == 1
    assert not list(path.parent.glob(".*.tmp"))


# item 5: Ctrl-C -----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("during", ["set-up", "training"])
def test_ctrl_c_exits_130_with_one_line(capsys, during):
    from dynlm.run.cli import user_errors
    from dynlm.run.scaffold import TrainingInterrupted

    raised = KeyboardInterrupt() if during == "set-up" else TrainingInterrupted("interrupted (Ctrl-C) at step 3")
    with pytest.raises(SystemExit) as exit_:
        with user_errors():
            raise raised
    assert exit_.value.code == 130
    line, = capsys.readouterr().err.strip().splitlines()
    assert line == ("error: interrupted (Ctrl-C) at step 3" if during == "training" else
                    "error: interrupted (Ctrl-C) before any checkpoint or result was saved: run the same command again")


@pytest.mark.slow
def test_ctrl_c_is_one_line_with_the_resume_command_and_the_run_resumes(toy_data_dir, tmp_path):
    run = tmp_path / "run"
    args = [*tiny_lm_overrides(toy_data_dir, **{"trainer.max_steps": 100000, "trainer.eval_interval": 5}),
            f"hydra.run.dir={run}"]
    proc = subprocess.Popen([sys.executable, "scripts/train.py", *args], cwd=REPO, env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    last = run / "checkpoints" / "last.pt"
    deadline = time.time() + 240
    while not last.is_file() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    time.sleep(0.5)  # mid-training, past the first checkpoint
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    done = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    msg = _one_line_error(done, status=130)
    assert msg.startswith("error: interrupted (Ctrl-C) at step ")
    assert f"{last} (step " in msg and f"trainer.resume=true hydra.run.dir={run}" in msg
    saved_step = int(re.search(r"\(step (\d+)\)", msg).group(1))
    assert load_checkpoint(last)["progress"]["step"] == saved_step  # intact, and the step it names

    resumed = _train(*args, "trainer.resume=true", f"hydra.run.dir={run}", "trainer.stop_after_steps=1")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"resumed from {last} at step {saved_step}" in resumed.stdout
    assert load_checkpoint(last)["progress"]["step"] == saved_step + 1


# item 7: torchrun with restarts ------------------------------------------------------------------------------------

def test_a_user_error_is_claimed_once_per_torchrun_job_and_stops_its_restarts(monkeypatch, tmp_path):
    """The agent's store (here one of our own) outlives the attempts: one process of the job prints the error, and
    a restart finds it and stops; outside torchrun every process prints its own."""
    import socket

    import torch.distributed as tdist

    assert dist.claim_user_error("error: x") and dist.user_error_of_job() is None  # not under torchrun
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    agent = tdist.TCPStore("127.0.0.1", port, 1, is_master=True)
    error_file = tmp_path / "error.json"
    for k, v in dict(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE="2", LOCAL_RANK="0", RANK="1",
                     TORCHELASTIC_USE_AGENT_STORE="True", TORCHELASTIC_RESTART_COUNT="0",
                     TORCHELASTIC_ERROR_FILE=str(error_file)).items():
        monkeypatch.setenv(k, v)
    assert dist.user_error_of_job() is None  # the first attempt never stops early
    assert dist.claim_user_error("error: data folder /x does not exist")  # the first to hit it prints it
    assert not dist.claim_user_error("error: data folder /x does not exist")  # the other rank does not
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "1")
    assert dist.user_error_of_job() == "error: data folder /x does not exist"
    dist.tell_torchrun(dist.user_error_of_job())
    assert json.loads(error_file.read_text())["message"]["extraInfo"]["py_callstack"] == \
        "error: data folder /x does not exist"
    del agent


@pytest.mark.slow
def test_torchrun_with_restarts_prints_a_user_error_once_and_does_no_work_again(tmp_path):
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "--max-restarts=2",
           "--monitor-interval=0.5", "scripts/train.py", "model=tiny", f"data.dir={tmp_path / 'nowhere'}",
           "trainer.device=cpu", f"hydra.run.dir={run}"]
    proc = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    errors = [line for line in out.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "nowhere does not exist" in errors[0], out[-4000:]
    # torchrun's own summary names the problem instead of a link to its docs
    assert "traceback : error: data folder" in out and "To enable traceback" not in out
    assert not (run / "train.log").exists()  # the restarts stopped before any work
