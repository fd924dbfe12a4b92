"""A run folder keeps what was saved: no silent overwrite, no stale temporaries, usual file modes, no test split
needed by stage 1 (issue #13, items 1, 3, 4, 9)."""
import os
import shutil

import pytest

from dynlm.run.checkpoint import load_checkpoint, save_checkpoint
from dynlm.run.setup import RunFolderError
from dynlm.train import train
from hydra_helpers import compose_config, records, tiny_lm_overrides

SHORT = {"trainer.max_steps": 4, "trainer.eval_interval": 4, "trainer.log_interval": 2}


def test_a_new_run_refuses_a_folder_that_holds_a_run(toy_data_dir, tmp_path):
    run = tmp_path / "run"
    train(compose_config(tiny_lm_overrides(toy_data_dir, **SHORT)), run)
    before = (run / "checkpoints" / "best.pt").read_bytes()
    with pytest.raises(RunFolderError, match=r"trainer.resume=true.*hydra.run.dir.*trainer.overwrite=true"):
        train(compose_config(tiny_lm_overrides(toy_data_dir, **{**SHORT, "trainer.max_steps": 2})), run)
    assert (run / "checkpoints" / "best.pt").read_bytes() == before  # nothing was touched
    assert load_checkpoint(run / "checkpoints" / "last.pt")["progress"]["step"] == 4

    over = tiny_lm_overrides(toy_data_dir, **{**SHORT, "trainer.max_steps": 2, "trainer.eval_interval": 2,
                                              "trainer.overwrite": "true"})
    train(compose_config(over), run)
    assert load_checkpoint(run / "checkpoints" / "last.pt")["progress"]["step"] == 2
    # step 1 and every log_interval of the new run only: the old run's records (1, 2, 4) are gone
    assert [r["step"] for r in records(run) if "train/loss" in r] == [1, 2]


def test_stale_temporaries_are_removed_and_checkpoints_get_the_usual_mode(toy_data_dir, tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    stale = run / "checkpoints" / ".last.pt.abc123.tmp"  # what a kill during a write leaves
    stale.write_bytes(b"x" * 1000)
    train(compose_config(tiny_lm_overrides(toy_data_dir, **SHORT)), run)
    assert not stale.exists()
    mask = os.umask(0)
    os.umask(mask)
    assert (run / "checkpoints" / "last.pt").stat().st_mode & 0o777 == 0o666 & ~mask
    path = save_checkpoint({"x": 1}, tmp_path / "c.pt")
    assert path.stat().st_mode & 0o777 == 0o666 & ~mask


def test_stage1_does_not_need_the_test_split(toy_data_dir, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    for split in ("train", "valid"):
        shutil.copy(toy_data_dir / f"{split}.txt", data / f"{split}.txt")
    result = train(compose_config(tiny_lm_overrides(data, **SHORT)), tmp_path / "run")
    assert result["step"] == 4


def test_resume_drops_replayed_records_and_torn_lines(toy_data_dir, tmp_path):
    over = tiny_lm_overrides(toy_data_dir, **{**SHORT, "trainer.max_steps": 6, "trainer.eval_interval": 3,
                                              "trainer.log_interval": 1})
    train(compose_config(over), tmp_path / "full")
    run = tmp_path / "split"
    train(compose_config(over + ["trainer.stop_after_steps=4"]), run)
    with open(run / "metrics.jsonl", "a", encoding="utf-8") as f:  # a step logged after last.pt, then a kill
        f.write('{"step": 5, "train/loss": 1.0}\n{"step": 6, "train/lo')
    train(compose_config(over + ["trainer.resume=true"]), run)
    steps = [r["step"] for r in records(run)]
    assert steps == [r["step"] for r in records(tmp_path / "full")]
    assert len(steps) == len(set((r["step"], tuple(sorted(r))) for r in records(run)))


def test_a_full_disk_names_the_file_and_keeps_the_previous_checkpoint(toy_data_dir, tmp_path, monkeypatch):
    import dynlm.run.checkpoint as ckpt_module
    from dynlm.run.checkpoint import CheckpointWriteError

    real_save, calls = ckpt_module.torch.save, []

    def save_until_full(obj, f):
        calls.append(1)
        if len(calls) > 2:  # best.pt and last.pt of the first validation are written, then the disk is full
            f.write(b"partial")
            raise RuntimeError("[enforce fail at inline_container.cc:778] . PytorchStreamWriter failed writing "
                               "file data/0: file write failed; unexpected pos 1272640 vs 1272580")
        return real_save(obj, f)

    monkeypatch.setattr(ckpt_module.torch, "save", save_until_full)
    run = tmp_path / "run"
    over = tiny_lm_overrides(toy_data_dir, **{**SHORT, "trainer.max_steps": 4, "trainer.eval_interval": 2})
    with pytest.raises(CheckpointWriteError,
                       match=r"checkpoints/(best|last)\.pt .*disk full.*intact.*trainer.resume=true"):
        train(compose_config(over), run)
    monkeypatch.setattr(ckpt_module.torch, "save", real_save)
    assert load_checkpoint(run / "checkpoints" / "last.pt")["progress"]["step"] == 2
    assert not list((run / "checkpoints").glob(".*.tmp"))


def test_overwrite_deletes_nothing_before_the_new_run_has_passed_its_checks(toy_data_dir, tmp_path):
    run = tmp_path / "run"
    train(compose_config(tiny_lm_overrides(toy_data_dir, **SHORT)), run)
    best = run / "checkpoints" / "best.pt"
    meta = ["stage=meta", f"meta.lm_checkpoint={best}", f"data.dir={toy_data_dir}", "trainer.device=cpu",
            "trainer.overwrite=true"]
    with pytest.raises(RunFolderError, match="meta.lm_checkpoint"):  # it would delete its own input
        train(compose_config(meta), run)
    with pytest.raises(ValueError, match="nothing to train"):  # a config error: the old run stays
        train(compose_config(meta[:-1] + ["rule=dyneval", f"meta.lm_checkpoint={tmp_path / 'x.pt'}",
                                          "trainer.overwrite=true"]), run)
    assert best.is_file() and (run / "checkpoints" / "last.pt").is_file() and records(run)
