"""Joint training (issue #25): stage 2's window with `meta.train_static=true` trains θ0 with the update rule in the
loop, its gradient reaching θ0 through the per-segment updates, and φ in the same backward.

The window's gradient is the one `TruncatedBPTT.estimate` sets (before `meta_window` clips it and steps), read
through `read_window` as stage 2 reads it, every parameter adapting (`meta.dynamic=[*]`), float64.
"""
import copy
import dataclasses

import pytest
import torch

from dynamic_helpers import RandomStreams, perturb, tiny_meta_learning, tiny_model
from dynlm.dynamic.cheap_learner import ContextRule
from dynlm.dynamic.dyneval import DIRECTIONS_OFF
from dynlm.model import token_nll
from dynlm.train.meta_trainer import fresh_window_state
from dynlm.train.window_reading import read_window

K, L, B = 4, 4, 2  # RandomStreams starts an article at every 5th segment: segments 0 .. 3 are one article each


def joint_learning(model, second_order: bool, eta: float = 0.01, lam: float = 0.02):
    """A joint window's `MetaLearning` on `model`: the cheap rule over every parameter, θ0 trained."""
    ml = tiny_meta_learning(model=model, dynamic=["*"], window=K, seg_len=L, batch_size=B, train_static=True,
                            second_order=second_order, eta=eta, lam=lam)
    assert ml.names == [n for n, _ in model.named_parameters()]
    assert {id(p) for p in ml.trained_parameters} >= {id(p) for p in model.parameters()}
    return ml


def window_loss(ml, streams, position: int = 0) -> torch.Tensor:
    """The window's meta-loss, read from a fresh state (every stream at θ0, zero (h, c)), as the estimator reads it."""
    state, _ = fresh_window_state(ml, B)
    return read_window(ml, streams, position, state, None, ml.estimator.reading).per_stream.mean()


def window_gradients(ml, streams, position: int = 0):
    """The window's loss and the gradients its estimator sets on θ0 and φ."""
    ml.optimizer.zero_grad(set_to_none=True)
    state, _ = fresh_window_state(ml, B)
    window, _ = ml.estimator.estimate(
        ml, lambda with_static: read_window(ml, streams, position, state, None, ml.estimator.reading), seed=0)
    return (float(window.per_stream.detach().mean()), {n: p.grad.clone() for n, p in ml.model.named_parameters()},
            {n: p.grad.clone() for n, p in ml.learner.named_parameters()})


@pytest.mark.parametrize("second_order", [False, True])
def test_with_the_rules_step_at_zero_joint_training_is_stage_1_on_the_same_tokens(second_order):
    """Stage 1 on the same tokens: the model with θ0 shared by the streams reads the window's K segments of each
    stream as one [K·L, B] sequence from a zero state, the hidden state carried across segments (as the window
    carries it; no article starts inside this window, the one place where the window resets it), and the loss is
    the mean NLL over the K·L·B tokens. The window's loss is the mean over streams of the mean over segments of each
    stream's segment mean: the same number when every segment is full. The gradient reaches θ0 through the
    per-stream weights θ_s (every parameter adapting), so it equals stage 1's only if the window passes it on whole.

    A rule whose step is zero: the cheap rule with η = 0 and λ = 0, built from its class because `rule.eta`'s range
    refuses 0 (a rule that never steps is no dynamic evaluation). Then gain = η / (rms + ε) = 0 and flush is
    Krause's floor 1e-12 times θ0 − θ = 0, so θ_s = θ0 exactly and φ (the scales of a zero step) gets no gradient.
    Dropout off, so that both readings see the same (no) masks."""
    model = tiny_model(torch.float64, dropout=False)
    stage1 = copy.deepcopy(model)
    ml = joint_learning(model, second_order)
    zero_step = ContextRule(ml.names, ml.stats, eta=0.0, lam=0.0, eps=0.001, **DIRECTIONS_OFF).to(torch.float64)
    perturb(zero_step, scale=0.5)  # scales far from 1: still no step
    ml = dataclasses.replace(ml, learner=zero_step)
    streams = RandomStreams(seg_len=L, batch=B)
    assert not any(bool(streams.batch(k).new_article.any()) for k in range(1, K))
    loss, theta_grads, phi_grads = window_gradients(ml, streams)

    batches = [streams.batch(k) for k in range(K)]
    x, y = torch.cat([b.x for b in batches]), torch.cat([b.y for b in batches])
    stage1.train()
    expected = token_nll(stage1(x, stage1.init_state(B)).logits, y).mean()
    expected_grads = dict(zip([n for n, _ in stage1.named_parameters()],
                              torch.autograd.grad(expected, list(stage1.parameters()))))
    assert abs(loss - float(expected.detach())) <= 1e-12 * float(expected.detach())
    assert set(theta_grads) == set(expected_grads)
    for n, g in expected_grads.items():
        torch.testing.assert_close(theta_grads[n], g, rtol=1e-9, atol=1e-13, msg=n)
    assert all(float(g.abs().sum()) > 0 for g in expected_grads.values())
    assert all(float(g.abs().max()) == 0.0 for g in phi_grads.values())


class OneArticle(RandomStreams):
    """`RandomStreams` with one article per stream: no reset after segment 0."""

    def batch(self, k):
        b = super().batch(k)
        return b._replace(new_article=torch.full_like(b.new_article, k == 0))


@pytest.mark.parametrize("second_order", [False, True])
def test_after_a_truncation_theta0_still_gets_stage_1s_gradient(second_order):
    """The window after a detached one (`ReadingState.detach`, the truncation point) starts from carried weights,
    not from θ0: it must still pass θ0's gradient on whole (the carried memory θ − θ0 a constant of the window).
    With the rule's step at zero, the second window of each stream is stage 1 on its K segments, the hidden state
    carried over from the first window (detached)."""
    model = tiny_model(torch.float64, dropout=False)
    stage1 = copy.deepcopy(model)
    ml = joint_learning(model, second_order)
    zero_step = ContextRule(ml.names, ml.stats, eta=0.0, lam=0.0, eps=0.001, **DIRECTIONS_OFF).to(torch.float64)
    ml = dataclasses.replace(ml, learner=zero_step)
    streams = OneArticle(seg_len=L, batch=B)
    state, _ = fresh_window_state(ml, B)
    first = read_window(ml, streams, 0, state, None, ml.estimator.reading).state.detach()
    ml.optimizer.zero_grad(set_to_none=True)
    window, _ = ml.estimator.estimate(
        ml, lambda with_static: read_window(ml, streams, K, first, None, ml.estimator.reading), seed=0)
    theta_grads = {n: p.grad for n, p in ml.model.named_parameters()}

    batches = [streams.batch(k) for k in range(2 * K)]
    x = [torch.cat([b.x for b in batches[i:i + K]]) for i in (0, K)]
    y = torch.cat([b.y for b in batches[K:]])
    with torch.no_grad():
        carried = stage1(x[0], stage1.init_state(B)).state
    expected = token_nll(stage1(x[1], carried).logits, y).mean()
    expected_grads = dict(zip([n for n, _ in stage1.named_parameters()],
                              torch.autograd.grad(expected, list(stage1.parameters()))))
    torch.testing.assert_close(window.per_stream.detach().mean(), expected.detach(), rtol=1e-12, atol=0)
    for n, g in expected_grads.items():
        torch.testing.assert_close(theta_grads[n], g, rtol=1e-9, atol=1e-13, msg=n)


def test_second_order_joint_gradient_equals_finite_differences():
    """The second-order meta-gradient of a joint window w.r.t. coordinates of θ0 (LSTM matrices and a bias, the tied
    table, the decoder bias) and of φ equals central finite differences of the window loss, float64, with a rule
    whose steps move the weights (η = 0.05: each update changes the next segment's loss). Stage-1 dropout is on:
    every read starts from the same RNG state, so every read draws the same masks (recomputed segments replay
    them). First order drops the terms through g_s = ∂ℓ_s/∂θ_s, so it must differ from the differences (else the
    check could not tell the two apart).

    φ's weights on its context features stay zero (its per-tensor biases, the scales, are set away from zero): the
    cheap rule reads its features (‖g_s‖, ℓ_s) detached by design (context, not a path for meta-gradients), so with
    non-zero weights its meta-gradient leaves out how the features depend on θ0 and is not the window loss's exact
    gradient (4% off on a `layers.0.weight_hh` coordinate of this window). The weights' own gradient is exact and
    checked."""
    model = tiny_model(torch.float64, dropout=True)
    ml = joint_learning(model, second_order=True, eta=0.05)
    with torch.no_grad():  # per-tensor scales away from 1, the same in every context (see the docstring)
        ml.learner.bias.copy_(0.3 * torch.randn(ml.learner.bias.shape, generator=torch.Generator().manual_seed(0)))
    streams = RandomStreams(seg_len=L, batch=B)

    torch.manual_seed(5)
    _, theta_grads, phi_grads = window_gradients(ml, streams)
    first = joint_learning(copy.deepcopy(model), second_order=False, eta=0.05)
    first = dataclasses.replace(first, learner=ml.learner)
    torch.manual_seed(5)
    _, first_grads, _ = window_gradients(first, streams)

    def loss() -> float:
        torch.manual_seed(5)
        with torch.enable_grad():  # the reading takes each segment's gradient for its update
            return float(window_loss(ml, streams).detach())

    params = {**{("theta", n): p for n, p in model.named_parameters()},
              **{("phi", n): p for n, p in ml.learner.named_parameters()}}
    grads = {**{("theta", n): g for n, g in theta_grads.items()}, **{("phi", n): g for n, g in phi_grads.items()}}
    coords = [(("theta", "layers.0.weight_hh"), 5), (("theta", "layers.1.weight_ih"), 17),
              (("theta", "layers.1.bias_hh"), 3), (("theta", "embedding.weight"), 40),
              (("theta", "decoder_bias"), 7), (("phi", "bias"), 0), (("phi", "weight"), 2)]
    names = {n for _, n in params}
    coords = [c for c in coords if c[0][1] in names]
    assert len(coords) == 7, names
    eps = 1e-6
    first_differs = 0
    for key, idx in coords:
        flat = params[key].detach().view(-1)
        with torch.no_grad():
            flat[idx] += eps
        up = loss()
        with torch.no_grad():
            flat[idx] -= 2 * eps
        down = loss()
        with torch.no_grad():
            flat[idx] += eps
        fd = (up - down) / (2 * eps)
        ad = float(grads[key].view(-1)[idx])
        assert abs(fd) > 1e-6, (key, idx, fd)
        assert abs(fd - ad) <= 1e-9 + 1e-6 * abs(fd), (key, idx, fd, ad)  # 1e-9: the differences' rounding
        if key[0] == "theta":
            fo = float(first_grads[key[1]].view(-1)[idx])
            first_differs += abs(fd - fo) > 1e-3 * abs(fd)
    assert first_differs >= 2
