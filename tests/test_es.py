"""The evolution-strategies estimator of the meta-gradient (`meta.estimator=es`)."""
import pytest
import torch

from dynamic_helpers import RandomStreams as _Streams
from dynamic_helpers import tiny_meta_learning
from dynlm.dynamic.es import antithetic_directions, assign_flat_grad, es_gradient, shifted
from dynlm.train import train
from dynlm.train.meta_trainer import fresh_window_state
from dynlm.train.meta_window import meta_window
from dynlm.train.window_reading import read_window
from hydra_helpers import compose_config, meta_overrides, records, straight_and_resumed


def test_es_gradient_agrees_in_expectation_with_backprop_on_a_quadratic_like_loss():
    # L = ½ φᵀAφ + bᵀφ + 0.05 Σ φ⁴: antithetic ES estimates ∇L up to O(σ²) (exactly on the quadratic part); the
    # mean of many estimates must be backprop's gradient, and a single estimate must not be (it is noisy)
    torch.manual_seed(0)
    dim = 6
    m = torch.randn(dim, dim, dtype=torch.float64)
    a, b = m @ m.t() / dim + torch.eye(dim, dtype=torch.float64), torch.randn(dim, dtype=torch.float64)
    phi = torch.randn(dim, dtype=torch.float64, requires_grad=True)

    def loss(x):
        return 0.5 * x @ (a @ x) + b @ x + 0.05 * x.pow(4).sum()

    exact, = torch.autograd.grad(loss(phi), phi)
    sigma, pairs = 0.01, 40000
    eps = antithetic_directions(dim, pairs, torch.Generator().manual_seed(1))
    with torch.no_grad():
        plus = torch.stack([loss(phi + sigma * e) for e in eps])
        minus = torch.stack([loss(phi - sigma * e) for e in eps])
    estimate = es_gradient(eps, plus, minus, sigma)
    assert float((estimate - exact).norm() / exact.norm()) < 0.03
    one = es_gradient(eps[:1], plus[:1], minus[:1], sigma)
    assert float((one - exact).norm() / exact.norm()) > 0.1


def test_shifted_moves_phi_inside_the_block_and_restores_it_exactly():
    p = [torch.nn.Parameter(torch.randn(2, 3)), torch.nn.Parameter(torch.randn(4))]
    before = [t.detach().clone() for t in p]
    delta = torch.randn(10, dtype=torch.float64)
    with shifted(p, delta):
        torch.testing.assert_close(p[0].detach(), before[0] + delta[:6].view(2, 3).float())
        torch.testing.assert_close(p[1].detach(), before[1] + delta[6:].float())
    for t, s in zip(p, before):
        assert torch.equal(t.detach(), s)
    with pytest.raises(RuntimeError, match="read failed"), shifted(p, delta):
        raise RuntimeError("read failed")
    for t, s in zip(p, before):
        assert torch.equal(t.detach(), s)  # restored after an error inside the block too
    assign_flat_grad(p, delta)
    assert torch.equal(p[1].grad, delta[6:].float())


def _tiny_learning(es_sigma, es_pairs=1):
    return tiny_meta_learning(estimator="es", es_sigma=es_sigma, es_pairs=es_pairs)


def test_every_read_of_a_window_sees_the_same_dropout_masks():
    # at σ → 0 the loss at φ + σε and at φ − σε differ only by σ: with dropout on, that holds only if every read
    # of the window draws the same masks (common random numbers)
    torch.manual_seed(0)
    ml = _tiny_learning(es_sigma=1e-9)
    state, static_lm = fresh_window_state(ml, 2)
    _, _, report = meta_window(ml, _Streams(), 0, state, static_lm, seed=5)
    assert report.skipped == 0
    assert report.diag["es/spread"] < 1e-6
    ml = _tiny_learning(es_sigma=2.0)  # a real perturbation does move the loss
    state, static_lm = fresh_window_state(ml, 2)
    _, _, report = meta_window(ml, _Streams(), 0, state, static_lm, seed=5)
    assert report.diag["es/spread"] > 1e-4, report.diag


def test_an_es_window_steps_phi_and_carries_the_unperturbed_reading_state():
    # φ moves; the state handed to the next window is that of reading with φ itself (not φ ± σε): the same as
    # reading the window with φ's values before the step, without the estimator
    torch.manual_seed(0)
    ml = _tiny_learning(es_sigma=0.3, es_pairs=2)
    for p in ml.learner.parameters():
        torch.nn.init.normal_(p, std=0.1)
    before = [p.detach().clone() for p in ml.learner.parameters()]
    state, static_lm = fresh_window_state(ml, 2)
    torch.manual_seed(7)
    new_state, _, report = meta_window(ml, _Streams(), 0, state, static_lm, seed=5)
    assert report.skipped == 0 and report.tokens == 3 * 4 * 2
    assert any(not torch.equal(p.detach(), b) for p, b in zip(ml.learner.parameters(), before))

    with torch.no_grad():
        for p, b in zip(ml.learner.parameters(), before):
            p.copy_(b)
    torch.manual_seed(7)
    masks_seed = int(torch.randint(2**62, (1,)))
    torch.manual_seed(masks_seed)
    ml.model.train()
    # without the static model's reading, as the φ ± σε reads: the same masks all the same
    ref = read_window(ml, _Streams(), 0, state, None).state
    for n in ref.fast:
        torch.testing.assert_close(new_state.fast[n], ref.fast[n], rtol=0, atol=0)


def test_the_gradient_an_es_window_steps_with_is_the_estimate_from_its_plus_and_minus_reads():
    # recompute ĝ from reads of φ + σε and φ − σε (the window's directions and masks) and compare it with the
    # gradient the window hands to Adam (no clipping): a swapped sign or pairing would fail
    torch.manual_seed(0)
    ml = _tiny_learning(es_sigma=0.3, es_pairs=3)
    ml.meta.clip = 1e9
    params = list(ml.learner.parameters())
    for p in params:
        torch.nn.init.normal_(p, std=0.1)
    before = [p.detach().clone() for p in params]
    state, static_lm = fresh_window_state(ml, 2)
    torch.manual_seed(11)
    meta_window(ml, _Streams(), 0, state, static_lm, seed=5)
    used = torch.cat([p.grad.flatten() for p in params]).double()

    with torch.no_grad():
        for p, b in zip(params, before):
            p.copy_(b)
    eps = antithetic_directions(sum(p.numel() for p in params), 3, torch.Generator().manual_seed(5))
    torch.manual_seed(11)
    masks_seed = int(torch.randint(2**62, (1,)))
    ml.model.train()

    def loss(delta):
        with shifted(params, delta):
            torch.manual_seed(masks_seed)
            return float(read_window(ml, _Streams(), 0, state, None).per_stream.mean())

    plus = torch.tensor([loss(0.3 * e) for e in eps], dtype=torch.float64)
    minus = torch.tensor([loss(-0.3 * e) for e in eps], dtype=torch.float64)
    torch.testing.assert_close(used, es_gradient(eps, plus, minus, 0.3), rtol=1e-4, atol=1e-7)
    assert float(used.norm()) > 0


SIZES = {"rule": "cheap", "meta.estimator": "es", "meta.es_pairs": 2, "meta.batch_size": 3, "meta.seg_len": 4,
         "meta.window": 10, "meta.gradstat_tokens": 600, "meta.valid_max_tokens": 300, "trainer.max_steps": 6,
         "trainer.eval_interval": 3}


@pytest.mark.slow
def test_stage2_with_the_es_estimator_trains_and_resumes_exactly(lm_checkpoint, tmp_path):
    data, ckpt = lm_checkpoint
    over = meta_overrides(data, ckpt, **SIZES)
    a, b = straight_and_resumed(over, tmp_path)
    assert a["config"]["meta"]["estimator"] == "es"
    assert float(a["meta_learner"]["weight"].abs().sum()) > 0
    for k in a["meta_learner"]:
        torch.testing.assert_close(a["meta_learner"][k], b["meta_learner"][k], rtol=0, atol=0, msg=k)
    steps = [r for r in records(tmp_path / "full") if "meta/loss" in r]
    assert len(steps) == 6 and all(r["meta/es/grad_norm"] > 0 and r["meta/es/spread"] > 0 for r in steps)


@pytest.mark.parametrize("extra, match", [
    (["meta.estimator=adjoint"], "meta.estimator='adjoint'"),
    (["meta.estimator=es", "meta.train_static=true"], "meta.train_static=true needs meta.estimator=bptt"),
    (["meta.estimator=es", "meta.second_order=true"], "meta.second_order=true needs meta.estimator=bptt"),
    (["meta.estimator=es", "meta.es_sigma=0"], "meta.es_sigma=0"),
])
def test_bad_estimator_settings_say_what_to_change(lm_checkpoint, tmp_path, extra, match):
    data, ckpt = lm_checkpoint
    with pytest.raises(ValueError, match=match):
        train(compose_config(meta_overrides(data, ckpt, rule="cheap", **{"trainer.max_steps": 1}) + extra), tmp_path)
