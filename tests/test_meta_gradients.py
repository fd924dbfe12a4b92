"""Meta-gradients: checkpointed == plain, finite differences == autograd, truncation cuts the graph."""
import gc

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensor

from dynamic_helpers import perturb, read, setup, tokens
from dynlm.model import static_weights


def _meta_grads(model, names, learner, segs, **kw):
    learner.zero_grad()
    losses, _ = read(model, learner, names, segs, keep_graph=True, **kw)
    losses.mean().backward()
    return [p.grad.clone() for p in learner.parameters()]


@pytest.mark.parametrize("second_order", [False, True])
def test_checkpointed_segments_give_the_same_meta_gradients(second_order):
    model, names, _, learner = setup(dtype=torch.float64, momentum=True)
    perturb(learner)
    model.train()  # with dropout: the recomputation must replay the same masks
    model.dropouti = model.dropout = model.wdrop = 0.2
    segs = tokens(4, 5, 2)
    torch.manual_seed(11)
    plain = _meta_grads(model, names, learner, segs, second_order=second_order, use_checkpoint=False)
    learner.use_checkpoint = True
    torch.manual_seed(11)
    ckpt = _meta_grads(model, names, learner, segs, second_order=second_order, use_checkpoint=True)
    for a, b in zip(plain, ckpt):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)
    assert any(float(a.abs().sum()) > 0 for a in plain)


def test_finite_differences_agree_with_autograd_over_several_segments():
    model, names, _, learner = setup(dtype=torch.float64)
    perturb(learner, scale=0.5)
    model.eval()
    segs = tokens(4, 3, 2)  # K = 4 segments, each update feeding the next

    def meta_loss():
        losses, _ = read(model, learner, names, segs, keep_graph=True, second_order=True)
        return losses.mean()

    learner.zero_grad()
    meta_loss().backward()
    params = dict(learner.named_parameters())
    checked = 0
    for name in ["log_alpha", "gate_head.weight", "feature_proj.weight", "tensor_embedding.weight"]:
        p = params[name]
        flat = p.detach().view(-1)
        for idx in range(0, flat.numel(), max(1, flat.numel() // 3))[:3]:
            eps = 1e-6
            with torch.no_grad():
                flat[idx] += eps
                up = float(meta_loss())
                flat[idx] -= 2 * eps
                down = float(meta_loss())
                flat[idx] += eps
            fd = (up - down) / (2 * eps)
            ad = float(p.grad.view(-1)[idx])
            assert abs(fd - ad) <= 1e-6 + 1e-4 * abs(fd), (name, idx, fd, ad)
            checked += 1
    assert checked >= 10


def test_truncation_cuts_the_graph_at_window_boundaries():
    model, names, _, learner = setup(momentum=True)
    perturb(learner)
    model.eval()
    segs = tokens(9, 4, 2)
    # window 1
    losses1, state = read(model, learner, names, segs[:3], keep_graph=True)
    held = dict(state.fast)  # depends on φ through window 1
    state = state.detach()
    assert all(not t.requires_grad for t in state.fast.values())
    # window 2 starts from the detached state: nothing of window 1 receives gradient
    losses2, _ = read(model, learner, names, segs[3:6], keep_graph=True, state=state)
    grads = torch.autograd.grad(losses2.mean(), list(held.values()), allow_unused=True)
    assert all(g is None for g in grads)
    # while φ does
    phi_grads = torch.autograd.grad(losses2.mean(), list(learner.parameters()), allow_unused=True)
    assert any(g is not None for g in phi_grads)


def _live_tensor_bytes() -> int:
    """Bytes of the real tensors alive (not the fake, symbolically sized ones that an earlier test's
    `torch.compile` may leave behind in this process)."""
    gc.collect()
    total = 0
    for obj in gc.get_objects():
        try:
            if isinstance(obj, torch.Tensor) and obj.device.type != "meta" and not isinstance(obj, FakeTensor):
                total += obj.numel() * obj.element_size()
        except ReferenceError:
            pass
    return total


def test_memory_does_not_grow_with_the_number_of_windows():
    model, names, _, learner = setup()
    perturb(learner)
    model.train()
    before = {n: t.detach().clone() for n, t in static_weights(model, names).items()}
    opt = torch.optim.Adam(learner.parameters(), 1e-3)
    segs = tokens(4, 5, 3)
    state = None
    sizes = []
    for _window in range(6):
        losses, state = read(model, learner, names, segs, keep_graph=True, state=state)
        opt.zero_grad()
        losses.mean().backward()
        opt.step()
        state = state.detach()
        sizes.append(_live_tensor_bytes())
    assert max(sizes[2:]) <= sizes[1] * 1.05, sizes
    # and the detached state holds no graph
    assert all(t.grad_fn is None for t in state.fast.values())
    # the static weights are bit-identical after six windows of reading and meta-training
    assert all(torch.equal(t, before[n]) for n, t in static_weights(model, names).items())
