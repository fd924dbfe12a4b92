"""The blockwise meta-learner update equals its whole-tensor reference (values and every gradient)."""
import pytest
import torch

import dynlm.kernels.blockwise as bw
from dynamic_helpers import dyneval_for, perturb, setup
from dynlm.kernels.fast_ops import fast_asinh
from dynlm.maths.gated import gated_update, normalized_grad


def _perturbed(momentum, seed=0):
    model, names, stats, learner = setup(dtype=torch.float64, momentum=momentum)
    return model, names, stats, perturb(learner, seed)


def _case(model, name, b=3, seed=1, momentum=False):
    g = torch.Generator().manual_seed(seed)
    th0 = dict(model.named_parameters())[name].detach().clone().requires_grad_()
    theta = (th0.detach() + 0.01 * torch.randn(b, *th0.shape, generator=g, dtype=th0.dtype)).requires_grad_()
    grad = (1e-2 * torch.randn(b, *th0.shape, generator=g, dtype=th0.dtype)).requires_grad_()
    grad.data[0].view(-1)[0] = 0.0  # a zero gradient (log|g| and sign g at 0)
    loss = 5 * torch.rand(b, generator=g, dtype=th0.dtype)
    m = (0.1 * torch.randn(1, *th0.shape, generator=g, dtype=th0.dtype)).requires_grad_() if momentum else None
    return theta, th0, grad, loss, m


@pytest.mark.parametrize("momentum", [False, True])
@pytest.mark.parametrize("budget", [5, None], ids=["many-blocks", "one-block"])
def test_blockwise_update_equals_reference_with_all_gradients(momentum, budget, monkeypatch):
    if budget:
        monkeypatch.setattr(bw, "BLOCK_COORDS", budget)
    model, names, _, learner = _perturbed(momentum)
    for k, n in enumerate(names[:2]):
        theta, th0, grad, loss, m = _case(model, n, momentum=momentum)
        ref = learner.reference_update(k, n, theta, th0, grad, loss, m)
        new = learner._update_tensor(k, n, theta, th0, grad, loss, m)
        torch.testing.assert_close(new[0], ref[0], rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(new[2], ref[2], rtol=1e-12, atol=1e-14)
        if momentum:
            torch.testing.assert_close(new[1], ref[1], rtol=1e-12, atol=1e-14)
        inputs = [theta, th0, grad] + ([m] if momentum else []) + list(learner.parameters())
        gen = torch.Generator().manual_seed(3)
        gouts = [torch.randn(t.shape, generator=gen, dtype=t.dtype) for t in (ref[0], ref[1]) if t is not None]

        def total(r, gouts):
            return sum((o * go).sum() for o, go in zip([r[0], r[1]] if momentum else [r[0]], gouts))

        g_ref = torch.autograd.grad(total(ref, gouts), inputs, allow_unused=True)
        g_new = torch.autograd.grad(total(new, gouts), inputs, allow_unused=True)
        for j, (a, b) in enumerate(zip(g_new, g_ref)):
            if b is None:
                assert a is None or float(a.abs().max()) == 0.0, j
                continue
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-13, msg=f"input {j}")


def test_blockwise_backward_is_differentiable_for_second_order():
    model, names, _, learner = _perturbed(momentum=False)
    n = names[0]
    theta, th0, grad, loss, _ = _case(model, n)

    def second(update):
        out = update(0, n, theta, th0, grad, loss, None)[0]
        (dg,) = torch.autograd.grad(out.square().sum(), [grad], create_graph=True)
        return torch.autograd.grad(dg.sum(), [theta, *learner.parameters()], allow_unused=True)

    for a, b in zip(second(learner._update_tensor), second(learner.reference_update)):
        if b is None:
            continue
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-13)


def test_untrained_learner_is_dyneval_and_dyneval_is_the_gated_update():
    model, names, stats, learner = setup(dtype=torch.float64)
    dyneval = dyneval_for(learner, stats)
    b = 2
    fast, grads, theta0 = {}, {}, {}
    for n in names:
        theta, th0, grad, _, _ = _case(model, n, b=b)
        fast[n], grads[n], theta0[n] = theta.detach(), grad.detach(), th0.detach()
    loss = torch.rand(b, dtype=torch.float64)
    new_meta, _, _ = learner(fast, grads, theta0, loss, {})
    new_dyn, _, _ = dyneval(fast, grads, theta0, loss, {})
    for n in names:
        copy, update, flush = learner.prior(n).exp()
        step = (learner.eta / learner.update_init) * normalized_grad(grads[n], learner.rms(n), learner.eps)
        expected = gated_update(fast[n], theta0[n], step, copy, update, flush)
        torch.testing.assert_close(new_dyn[n], expected, rtol=1e-12, atol=1e-15)
        # log α is initialised in float32 (then cast), so α matches η/u to ~1e-7 relative
        torch.testing.assert_close(new_meta[n], expected, rtol=1e-7, atol=1e-9)


def test_fast_asinh_matches_torch_asinh():
    x = torch.cat([torch.randn(5000, dtype=torch.float64) * torch.logspace(-30, 30, 5000, dtype=torch.float64),
                   torch.tensor([0.0, -0.0, 1e15, 2e15, -1e300], dtype=torch.float64)])
    torch.testing.assert_close(fast_asinh(x), torch.asinh(x), rtol=1e-14, atol=0.0)
    finite = x[x.abs() < 1e38]
    torch.testing.assert_close(fast_asinh(finite.float()), torch.asinh(finite).float(), rtol=1e-6, atol=0.0)
    inf = torch.tensor([float("inf"), -float("inf")])
    assert torch.equal(fast_asinh(inf), inf) and bool(fast_asinh(torch.tensor([float("nan")])).isnan().all())
    small = torch.randn(12, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(fast_asinh, (small,))
    assert torch.autograd.gradgradcheck(fast_asinh, (small,))
