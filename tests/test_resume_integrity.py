"""Checkpoint and resume integrity (issue #26): a resume reads the run's own data, a damaged checkpoint is refused
on load, a finished run stays as it is, and a run stopped before its first checkpoint needs one try to start over.
Every refusal leaves what was saved byte for byte as it was."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dynlm.run.checkpoint import CheckpointError, load_checkpoint
from dynlm.run.setup import RunFolderError
from dynlm.train import train
from hydra_helpers import compose_config, meta_overrides, records, tiny_lm_overrides

REPO = Path(__file__).resolve().parents[1]
SHORT = {"trainer.max_steps": 4, "trainer.eval_interval": 2, "trainer.log_interval": 1}
SAVED = ("checkpoints/last.pt", "checkpoints/best.pt", "metrics.jsonl")


def _saved(run: Path) -> dict:
    return {name: (run / name).read_bytes() for name in SAVED if (run / name).is_file()}


def _script(*args):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}
    env.pop("HYDRA_FULL_ERROR", None)
    return subprocess.run([sys.executable, "scripts/train.py", *map(str, args)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)


def _one_line_error(proc) -> str:
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr[-3000:]
    return lines[0]


def _copy_data(src: Path, dst: Path, change=None) -> Path:
    """A copy of the data folder; `change(split, text)` may rewrite a split's text."""
    dst.mkdir(parents=True)
    for split in ("train", "valid", "test"):
        text = (src / f"{split}.txt").read_text(encoding="utf-8")
        (dst / f"{split}.txt").write_text(change(split, text) if change else text, encoding="utf-8", newline="")
    return dst


def _renamed_words(split, text):
    """Every word w0..w48 renamed: the same vocabulary size, other words behind each id."""
    return " ".join(("v" + w[1:]) if w[:1] == "w" and w[1:].isdigit() else w for w in text.split(" "))


def _valid_articles_reordered(split, text):
    """The valid articles in another order: the same words (the tokenizer is train's), another text."""
    if split != "valid":
        return text
    head, *articles = text.split("\n = Valid article ")
    return "\n = Valid article ".join([head] + articles[::-1])


def _damage(path: Path, truncate: bool = False) -> None:
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    if truncate:
        del data[middle:]
    else:
        data[middle: middle + 4096] = bytes(b ^ 0xFF for b in data[middle: middle + 4096])
    path.write_bytes(bytes(data))


# 1. a resume reads the run's own data ----------------------------------------------------------------------------

def _stopped_lm_run(data, tmp_path):
    """A stage-1 run stopped after 2 of its 4 steps: its folder, overrides and saved files."""
    run = tmp_path / "run"
    over = tiny_lm_overrides(data, **SHORT)
    train(compose_config(over + ["trainer.stop_after_steps=2"]), run)
    return run, over, _saved(run)


def test_stage1_resume_on_data_with_other_word_ids_is_refused(toy_data_dir, tmp_path):
    run, _, saved = _stopped_lm_run(toy_data_dir, tmp_path)
    other = _copy_data(toy_data_dir, tmp_path / "other", _renamed_words)
    proc = _script(*tiny_lm_overrides(other, **SHORT), "trainer.resume=true", f"hydra.run.dir={run}")
    msg = _one_line_error(proc)
    assert "different vocabulary (same size, different ids)" in msg and str(toy_data_dir) in msg, msg
    assert _saved(run) == saved


def test_stage1_resume_on_another_valid_text_is_refused(toy_data_dir, tmp_path):
    run, over, saved = _stopped_lm_run(toy_data_dir, tmp_path)
    other = _copy_data(toy_data_dir, tmp_path / "other", _valid_articles_reordered)
    with pytest.raises(CheckpointError, match=rf"the valid text at {other} is not what the run of checkpoint .*"
                                              rf"last.pt read .*data.dir={toy_data_dir}.*trainer.overwrite=true"):
        train(compose_config(tiny_lm_overrides(other, **SHORT) + ["trainer.resume=true"]), run)
    assert _saved(run) == saved
    train(compose_config(over + ["trainer.resume=true"]), run)  # its own data resumes
    assert load_checkpoint(run / "checkpoints" / "last.pt")["progress"]["step"] == 4


def _meta_run(data, lm, run, **extra):
    over = meta_overrides(data, lm, **{"meta.batch_size": 2, "meta.seg_len": 4, "meta.window": 2,
                                       "meta.gradstat_tokens": 200, "meta.valid_max_tokens": 60,
                                       "trainer.max_steps": 4, "trainer.eval_interval": 2, **extra})
    return over, run


@pytest.fixture(scope="module")
def toy_lm(toy_data_dir, tmp_path_factory):
    run = tmp_path_factory.mktemp("lm")
    train(compose_config(tiny_lm_overrides(toy_data_dir, **SHORT)), run)
    return run / "checkpoints" / "best.pt"


def test_stage2_resume_on_another_valid_text_is_refused(toy_data_dir, toy_lm, tmp_path):
    over, run = _meta_run(toy_data_dir, toy_lm, tmp_path / "meta")
    train(compose_config(over + ["trainer.stop_after_steps=2"]), run)
    saved = _saved(run)
    other = _copy_data(toy_data_dir, tmp_path / "other", _valid_articles_reordered)
    moved = [o.replace(f"data.dir={toy_data_dir}", f"data.dir={other}") for o in over]
    with pytest.raises(CheckpointError, match=r"the valid text at .* is not what the run of checkpoint"):
        train(compose_config(moved + ["trainer.resume=true"]), run)
    assert _saved(run) == saved


# 2. a damaged checkpoint is refused on every load -----------------------------------------------------------------

@pytest.fixture
def finished_lm_run(toy_data_dir, tmp_path):
    run = tmp_path / "run"
    train(compose_config(tiny_lm_overrides(toy_data_dir, **SHORT)), run)
    return run


@pytest.mark.parametrize("truncate", [False, True], ids=["4KiB-overwritten", "truncated"])
def test_a_damaged_checkpoint_is_refused_and_its_intact_sibling_named(finished_lm_run, truncate):
    last, best = finished_lm_run / "checkpoints" / "last.pt", finished_lm_run / "checkpoints" / "best.pt"
    _damage(last, truncate)
    what = "truncated or corrupt" if truncate else r"corrupt \(its member .* fails its CRC check\)"
    with pytest.raises(CheckpointError, match=rf"{last} is {what}.*{best} is intact.*trainer.resume={best}"):
        load_checkpoint(last)
    _damage(best)
    with pytest.raises(CheckpointError, match=r"corrupt .*start the run again with trainer.overwrite=true"):
        load_checkpoint(last)


def test_resuming_from_a_corrupt_last_pt_is_one_line_and_changes_nothing(toy_data_dir, tmp_path):
    run = tmp_path / "run"
    over = tiny_lm_overrides(toy_data_dir, **SHORT)
    train(compose_config(over + ["trainer.stop_after_steps=2"]), run)
    _damage(run / "checkpoints" / "last.pt")
    saved = _saved(run)
    msg = _one_line_error(_script(*over, "trainer.resume=true", f"hydra.run.dir={run}"))
    assert "last.pt is corrupt" in msg and f"trainer.resume={run / 'checkpoints' / 'best.pt'}" in msg, msg
    assert "nan" not in msg
    assert _saved(run) == saved


def test_evaluating_a_corrupt_checkpoint_is_refused(finished_lm_run):
    from dynlm.eval.inputs import load_inputs
    from eval_helpers import compose_eval

    best = finished_lm_run / "checkpoints" / "best.pt"
    _damage(best)
    with pytest.raises(CheckpointError, match=rf"{best} is corrupt.*checkpoint=.*last.pt to evaluate"):
        load_inputs(compose_eval([f"checkpoint={best}"]))


def test_the_last_good_checkpoint_named_after_a_divergence_is_intact(finished_lm_run, toy_data_dir):
    run = finished_lm_run
    last, best = run / "checkpoints" / "last.pt", run / "checkpoints" / "best.pt"
    _damage(last)
    before = last.read_bytes()
    # no log record before the loss is nan: the perplexity of a huge finite loss overflows math.exp
    over = tiny_lm_overrides(toy_data_dir, **{**SHORT, "trainer.max_steps": 20, "trainer.log_interval": 100})
    with pytest.raises(FloatingPointError, match=rf"last good checkpoint, {best} \(trainer.resume={best}\)") as err:
        train(compose_config(over + [f"trainer.resume={best}", "optim.lr=1e30", "trainer.clip=0"]), run)
    assert "last.pt" not in str(err.value)
    assert last.read_bytes() == before


# 4. a finished run stays as it is ---------------------------------------------------------------------------------

def test_resuming_a_finished_stage1_run_changes_nothing(toy_data_dir, finished_lm_run, capsys):
    run = finished_lm_run
    saved = _saved(run)
    over = tiny_lm_overrides(toy_data_dir, **SHORT)
    capsys.readouterr()
    assert train(compose_config(over + ["trainer.resume=true"]), run)["finished"] == 1.0
    out = capsys.readouterr().out
    assert "nothing to do" in out and "trainer.max_steps=4 reached" in out and "larger trainer.max_steps" in out
    assert _saved(run) == saved
    # a larger budget goes on from there, and is finished in its turn
    train(compose_config(tiny_lm_overrides(toy_data_dir, **{**SHORT, "trainer.max_steps": 6})
                         + ["trainer.resume=true"]), run)
    assert load_checkpoint(run / "checkpoints" / "last.pt")["progress"]["step"] == 6
    assert [r["step"] for r in records(run) if "valid/loss" in r] == [2, 4, 6]


def test_a_finished_run_exits_0_from_the_script(toy_data_dir, finished_lm_run):
    saved = _saved(finished_lm_run)
    proc = _script(*tiny_lm_overrides(toy_data_dir, **SHORT), "trainer.resume=true",
                   f"hydra.run.dir={finished_lm_run}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "nothing to do" in proc.stdout
    assert _saved(finished_lm_run) == saved


def test_a_stopped_run_resumed_with_its_step_as_budget_still_validates(toy_data_dir, tmp_path):
    """Not finished: stopped (trainer.stop_after_steps) at step 2 without a final validation."""
    run = tmp_path / "run"
    over = tiny_lm_overrides(toy_data_dir, **{**SHORT, "trainer.eval_interval": 3})
    train(compose_config(over + ["trainer.stop_after_steps=2"]), run)
    train(compose_config(over + ["trainer.resume=true", "trainer.max_steps=2"]), run)
    assert [r["step"] for r in records(run) if "valid/loss" in r] == [2]
    assert load_checkpoint(run / "checkpoints" / "last.pt")["progress"]["finished"] is True


def test_resuming_a_finished_stage2_run_changes_nothing(toy_data_dir, toy_lm, tmp_path, capsys):
    over, run = _meta_run(toy_data_dir, toy_lm, tmp_path / "meta")
    train(compose_config(over), run)
    saved = _saved(run)
    capsys.readouterr()
    assert train(compose_config(over + ["trainer.resume=true"]), run)["finished"] == 1.0
    assert "nothing to do" in capsys.readouterr().out
    assert _saved(run) == saved


# 8. a run stopped before its first checkpoint ----------------------------------------------------------------------

def test_a_run_stopped_before_its_first_checkpoint_starts_over_on_either_hint(toy_data_dir, tmp_path):
    over = tiny_lm_overrides(toy_data_dir, **SHORT)
    run = tmp_path / "run"
    with pytest.raises(RuntimeError, match="injected failure"):  # a crash after step 1, before any checkpoint
        train(compose_config(over + ["trainer.eval_interval=3", "trainer.fail_at_step=1"]), run)
    assert records(run) and not (run / "checkpoints" / "last.pt").exists()
    with pytest.raises(RunFolderError, match=r"stopped before its first checkpoint.*nothing to resume.*"
                                             r"trainer.overwrite=true") as err:
        train(compose_config(over), run)
    assert "trainer.resume=true" not in str(err.value)
    train(compose_config(over + ["trainer.resume=true"]), run)  # what a user tries: the run starts over
    train(compose_config(over), tmp_path / "straight")
    def steps(folder):
        return [(r["step"], sorted(r)) for r in records(folder)]

    assert steps(run) == steps(tmp_path / "straight")  # none of the crashed attempt's records is left
    assert load_checkpoint(run / "checkpoints" / "last.pt")["progress"]["step"] == 4


def test_resume_true_in_an_empty_folder_is_still_refused(toy_data_dir, tmp_path):
    """A mistyped hydra.run.dir must not start a fresh run under trainer.resume=true."""
    with pytest.raises(FileNotFoundError, match="hydra.run.dir"):
        train(compose_config(tiny_lm_overrides(toy_data_dir, **SHORT) + ["trainer.resume=true"]), tmp_path / "x")
    assert not (tmp_path / "x" / "checkpoints").exists()
