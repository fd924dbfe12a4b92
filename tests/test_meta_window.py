"""The one stage-2 window: an estimator is a strategy plugged into it, and the static baseline read beside the
adaptive reading does not change what the adaptive reading draws."""
import math

import pytest
import torch

from dynamic_helpers import RandomStreams, tiny_meta_learning
from dynlm.train.estimator_base import Estimator
from dynlm.train.estimators import ESTIMATORS
from dynlm.train.meta_trainer import fresh_window_state
from dynlm.train.meta_window import meta_window
from dynlm.train.window_reading import SegmentReading, read_window


class ConstantGradient(Estimator):
    """A third estimator, defined here only: one read of the window without a graph, and the gradient `value` for
    every coordinate of φ and of the one LM parameter it trains."""

    value = 1.0

    def __init__(self, mc):
        self.seeds = []

    def static_parameters(self, model):
        return [model.decoder_bias]

    def estimate(self, ml, read, seed):
        window = read(True)
        for p in ml.trained_parameters:
            p.grad = torch.full_like(p, self.value)
        self.seeds.append(seed)
        return window, {"constant/value": self.value}


@pytest.fixture
def constant(monkeypatch):
    monkeypatch.setitem(ESTIMATORS, "constant", ConstantGradient)
    torch.manual_seed(0)
    return tiny_meta_learning(estimator="constant")


def test_a_new_estimator_plugs_into_the_window_and_trains_what_it_names(constant):
    ml = constant
    assert isinstance(ml.estimator, ConstantGradient)
    trained = [n for n, p in ml.model.named_parameters() if p.requires_grad]
    assert trained == ["decoder_bias"]  # only the LM parameter the estimator names, and it joins the optimiser
    assert any(p is ml.model.decoder_bias for p in ml.trained_parameters)
    phi = [p.detach().clone() for p in ml.learner.parameters()]
    model = {n: p.detach().clone() for n, p in ml.model.named_parameters()}
    state, static_lm = fresh_window_state(ml, 2)
    torch.manual_seed(7)
    new_state, _, report = meta_window(ml, RandomStreams(), 0, state, static_lm, seed=5)

    assert ml.estimator.seeds == [5]
    assert report.skipped == 0 and report.tokens == 3 * 4 * 2 and math.isfinite(report.static_loss)
    assert report.diag["constant/value"] == 1.0 and any(k.startswith("scale/") for k in report.diag)
    # Adam's first step moves every coordinate by its learning rate against a gradient of constant sign
    lr = ml.meta.learner_lr
    for p, b in zip(ml.learner.parameters(), phi):
        torch.testing.assert_close(p.detach(), b - lr, rtol=0, atol=1e-6)
    for n, p in ml.model.named_parameters():
        assert torch.equal(p.detach(), model[n]) == (n != "decoder_bias"), n
    # the state handed on is that of the estimator's read, with its reading options: no graph kept
    torch.manual_seed(7)
    with torch.no_grad():
        for p, b in zip(ml.learner.parameters(), phi):
            p.copy_(b)
        ml.model.decoder_bias.copy_(model["decoder_bias"])  # its step shifts every logit alike: only roundings
    ref = read_window(ml, RandomStreams(), 0, state, None, ml.estimator.reading)
    for n, t in new_state.fast.items():
        assert t.grad_fn is None
        assert torch.equal(t, ref.state.fast[n]), n


def test_a_non_finite_gradient_from_any_estimator_skips_the_step(constant):
    ml = constant
    ml.estimator.value = float("nan")
    phi = [p.detach().clone() for p in ml.learner.parameters()]
    state, static_lm = fresh_window_state(ml, 2)
    _, _, report = meta_window(ml, RandomStreams(), 0, state, static_lm, seed=5)
    assert report.skipped == 1 and report.reset_streams == 0
    assert all(torch.equal(p.detach(), b) for p, b in zip(ml.learner.parameters(), phi))


@pytest.mark.parametrize("reading", [SegmentReading(), SegmentReading(keep_graph=True, checkpoint=True)])
def test_the_static_baseline_leaves_the_adaptive_reading_as_it_would_be_without_it(reading):
    # the static model reads each segment from a fork of the RNG: the adaptive reading (what is trained) draws the
    # same dropout masks whether or not the baseline is measured, and the two readings start each segment from the
    # same random state, so `meta/improvement` compares them under the same masks
    torch.manual_seed(0)
    ml = tiny_meta_learning(window=2)
    ml.model.train()
    state, static_lm = fresh_window_state(ml, 2)
    torch.manual_seed(3)
    with_baseline = read_window(ml, RandomStreams(), 0, state, static_lm, reading)
    torch.manual_seed(3)
    alone = read_window(ml, RandomStreams(), 0, state, None, reading)
    assert torch.equal(with_baseline.per_stream, alone.per_stream)
    for n, t in alone.state.fast.items():
        assert torch.equal(with_baseline.state.fast[n], t), n
    assert alone.static_lm is None and alone.static_losses == [] and len(with_baseline.static_losses) == 2
    # segment 0 is read at θ0 by both: under the same masks their losses are the same
    ml.meta.window = 1
    torch.manual_seed(3)
    first = read_window(ml, RandomStreams(), 0, state, static_lm, reading)
    torch.testing.assert_close(first.per_stream.mean(), first.static_losses[0], rtol=0, atol=1e-6)
