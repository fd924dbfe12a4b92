"""The training bar: its total from the budget (steps, epochs or seconds), and the epoch counts it rests on."""
import math
from types import SimpleNamespace

import pytest
import torch

from dynlm.config import TrainerConfig
from dynlm.data import expected_seq_len, sample_seq_len
from dynlm.run.progress import Progress, TrainBar
from dynlm.run.scaffold import done_message
from dynlm.train.lm_trainer import LMTask
from dynlm.train.meta_trainer import MetaTask
from hydra_helpers import compose_config, tiny_lm_overrides


@pytest.mark.parametrize("bptt", [5, 20, 70])
def test_expected_seq_len_is_the_mean_of_the_sampled_lengths(bptt):
    gen = torch.Generator().manual_seed(0)
    draws = torch.tensor([sample_seq_len(bptt, gen) for _ in range(20000)], dtype=torch.float64)
    # 4 standard errors of the sample mean
    assert expected_seq_len(bptt) == pytest.approx(float(draws.mean()), abs=4 * float(draws.std()) / 20000 ** 0.5)


def _bar(**budget) -> TrainBar:
    return TrainBar(TrainerConfig(**{"max_epochs": None, **budget}), Progress(),
                    lambda p, epochs: 100.4 * epochs - p.step * 0.0, "train", enabled=True)


def test_bar_total_follows_the_budget_that_ends_first():
    assert _bar(max_steps=30).bar.total == 30
    assert _bar(max_epochs=2).bar.total == 201  # steps_for_epochs, rounded
    assert _bar(max_epochs=2, max_steps=500).bar.total == 201
    assert _bar(max_epochs=2, max_steps=150).bar.total == 150
    assert _bar(max_steps=30, max_time=5.0).bar.total == 30  # steps shown; the time may end the run earlier
    assert _bar().bar.total is None  # no budget: a count without a total


def test_bar_of_a_time_budget_counts_training_seconds():
    bar = _bar(max_time=60.0)
    assert bar.seconds and bar.bar.total == 60.0
    bar.advance(Progress(step=7, elapsed=30.0, valid_seconds=10.0), {"loss": "5.000"})
    assert bar.bar.n == 20.0  # validation is not counted, as the budget does not count it
    assert bar.bar.postfix == "step=7, loss=5.000"
    bar.advance(Progress(step=9, elapsed=80.0, valid_seconds=10.0))
    assert bar.bar.n == 60.0 and bar.bar.postfix == "step=9, loss=5.000"  # capped at the budget


def test_bar_total_is_the_exact_count_once_the_epochs_are_done():
    bar = _bar(max_epochs=1)
    bar.advance(Progress(step=97, epoch=1))
    assert bar.bar.total == 97


def test_stage1_epoch_estimate_matches_the_steps_an_epoch_takes(toy_data_dir):
    cfg = compose_config(tiny_lm_overrides(toy_data_dir, **{"trainer.max_steps": "null", "trainer.max_epochs": 2}))
    task = LMTask(cfg, torch.device("cpu"), None, None)
    progress = Progress()
    estimate = task.steps_for_epochs(progress, 2)
    while progress.epoch < 2:
        task.step(progress)
        progress.step += 1
    assert abs(estimate - progress.step) <= 0.1 * progress.step
    assert task.steps_for_epochs(progress, 2) == pytest.approx(progress.step)  # nothing left


@pytest.mark.parametrize("window, per_epoch", [(3, 10), (4, 8), (5, 1)])
def test_stage2_epoch_count_is_exact(window, per_epoch):
    task = SimpleNamespace(streams=SimpleNamespace(segments_per_epoch=per_epoch),
                           ml=SimpleNamespace(meta=SimpleNamespace(window=window)))
    predicted = MetaTask.steps_for_epochs(task, Progress(), 3)
    progress = Progress()
    while progress.epoch < 3:  # as MetaTask.step advances it
        progress.position += window
        progress.epoch = progress.position // per_epoch
        progress.step += 1
    assert predicted == progress.step
    assert MetaTask.steps_for_epochs(task, Progress(step=1, position=window), 3) == progress.step


def test_done_message_names_the_checkpoints(tmp_path):
    p = Progress(step=12, epoch=0, elapsed=3.2, best_valid_loss=math.log(90.0))
    line = done_message("meta", p, math.log(100.0), tmp_path / "checkpoints")
    assert line.startswith("done: step 12, epoch 0, adaptive valid ppl 100.00, best 90.00, 3s")
    assert f"{tmp_path / 'checkpoints'}/best.pt" in line and "last.pt" in line
