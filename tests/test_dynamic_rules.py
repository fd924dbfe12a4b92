"""The gated meta-learner and Krause's dynamic evaluation."""
import copy

import torch

from dynamic_helpers import dyneval_for, random_stats, read, setup, tiny_model, tokens
from dynlm.dynamic.cheap_learner import ContextRule
from dynlm.dynamic.dyneval import DIRECTIONS_OFF, DynEvalRule
from dynlm.dynamic.fast_weights import select_dynamic
from dynlm.dynamic.gated_update import krause_gate_logits
from dynlm.dynamic.reading import read_stream
from dynlm.dynamic.rule_base import FrozenWeights
from dynlm.maths.gated import gated_update
from dynlm.maths.krause import krause_step
from dynlm.model import static_weights, token_nll


def test_krause_rule_is_the_gated_update_with_constant_gates():
    torch.manual_seed(0)
    theta, theta0, g = torch.randn(50), torch.randn(50), torch.randn(50)
    rms = torch.rand(50) + 0.1
    lr, lam, eps, u = 0.002, 0.02, 0.001, 0.5
    ghat = g / (rms + eps)
    decrate = rms / rms.mean()
    krause = theta - lr * ghat + lam * decrate * (theta0 - theta)
    logits, u_k = krause_gate_logits(rms, float(rms.mean()), lam, u)
    copy, update, flush = logits.exp()
    assert u_k == u  # no flush near 1: the UPDATE gate is the configured one
    torch.testing.assert_close(copy + update + flush, torch.ones(50))
    torch.testing.assert_close(gated_update(theta, theta0, (lr / u_k) * ghat, copy, update, flush), krause)
    # a flush close to 1 lowers this tensor's UPDATE gate instead of breaking the simplex
    logits, u_k = krause_gate_logits(rms, float(rms.mean()), 0.35, u)  # flush up to ~0.64 > 1 - u
    copy, update, flush = logits.exp()
    assert u_k < u and u_k < 1.0 - float(flush.max()) and bool((copy > 0).all())
    torch.testing.assert_close(gated_update(theta, theta0, (lr / u_k) * ghat, copy, update, flush),
                               theta - lr * ghat + 0.35 * decrate * (theta0 - theta))


def test_dyneval_takes_a_step_of_krauses_rule_on_every_parameter():
    """One segment by hand, as Krause's dynamiceval.py computes it: MS = sqrt(v), gsum = the mean over tensors of
    mean(MS), decrate = MS / gsum capped at 1/λ, θ' = θ + λ·decrate·(θ0 − θ) − η·g/(MS + ε), with g the gradient
    of the segment's mean loss. Every parameter adapts, the tied embedding/decoder as one tensor."""
    model = tiny_model(torch.float64).eval()
    names = select_dynamic(model, ["*"])
    assert "embedding.weight" in names and "decoder_bias" in names
    stats = random_stats(model, names)
    big = names.index("layers.1.weight_hh")
    stats.v[names[big]][0, 0] = 1e3  # one coordinate whose decay rate Krause caps at 1/λ
    lr, lam, eps = 0.01, 0.05, 1e-4
    rule = DynEvalRule(names, stats, eta=lr, lam=lam, eps=eps, **DIRECTIONS_OFF)
    seg = torch.tensor([[3], [4], [5], [3], [4], [5]])
    _, state = read(model, rule, names, [seg])

    params = dict(model.named_parameters())
    loss = token_nll(model(seg[:-1], model.init_state(1)).logits, seg[1:]).mean()
    grads = dict(zip(names, torch.autograd.grad(loss, [params[n] for n in names])))
    ms = {n: stats.v[n].sqrt() for n in names}
    gsum = sum(float(ms[n].mean()) for n in names) / len(names)
    for n in names:
        decrate = (ms[n] / gsum).clamp(max=1.0 / lam)
        theta0 = params[n].detach()
        expected = theta0 + lam * decrate * (theta0 - theta0) - lr * grads[n] / (ms[n] + eps)
        torch.testing.assert_close(state.fast[n][0], expected, rtol=1e-10, atol=1e-12, msg=n)
    # a second step from θ1: the decay pulls back toward θ0 (fully where decrate is capped), plus the new step
    theta1 = {n: state.fast[n][0].detach() for n in names}
    seg2 = torch.tensor([[5], [7], [3]])
    _, state2 = read(model, rule, names, [seg2], state=state)
    leaves = {n: t.clone().requires_grad_() for n, t in theta1.items()}
    out = torch.func.functional_call(model, leaves, (seg2[:-1], state.lm))
    g2 = dict(zip(names, torch.autograd.grad(token_nll(out.logits, seg2[1:]).mean(), list(leaves.values()))))
    for n in names:
        decrate = (ms[n] / gsum).clamp(max=1.0 / lam)
        theta0 = params[n].detach()
        expected = theta1[n] + lam * decrate * (theta0 - theta1[n]) - lr * g2[n] / (ms[n] + eps)
        torch.testing.assert_close(state2.fast[n][0], expected, rtol=1e-10, atol=1e-12, msg=n)


def test_untrained_meta_learner_reproduces_dynamic_evaluation():
    model, names, stats, learner = setup()
    model.eval()
    dyneval = dyneval_for(learner, stats)
    segs = tokens(6, 5, 3)
    loss_meta, s_meta = read(model, learner, names, segs)
    loss_dyn, s_dyn = read(model, dyneval, names, segs)
    torch.testing.assert_close(loss_meta, loss_dyn, rtol=1e-5, atol=1e-6)
    for n in names:
        torch.testing.assert_close(s_meta.fast[n], s_dyn.fast[n], rtol=1e-5, atol=1e-6)
        assert not torch.equal(s_meta.fast[n], static_weights(model, names)[n].expand_as(s_meta.fast[n]))


def test_streams_stay_independent():
    model, names, stats, learner = setup(momentum=True)
    model.eval()
    segs = tokens(5, 4, 3)
    changed = [s.clone() for s in segs]
    for s in changed:
        s[:, 2] = (s[:, 2] + 7) % 23  # other tokens for stream 2 only
    a, sa = read(model, learner, names, segs, keep_graph=True)
    b, sb = read(model, learner, names, changed, keep_graph=True)
    torch.testing.assert_close(a[:, :2], b[:, :2])
    assert not torch.allclose(a[:, 2], b[:, 2])
    for n in names:
        torch.testing.assert_close(sa.fast[n][:2], sb.fast[n][:2])


def test_dynamic_embedding_update_changes_both_ends_and_stays_tied():
    model = tiny_model().eval()
    names = select_dynamic(model, ["embedding.weight"])
    assert names == ["embedding.weight"]
    stats = random_stats(model, names)
    rule = DynEvalRule(names, stats, eta=0.01, lam=0.02, eps=1e-3, **DIRECTIONS_OFF)
    seg = torch.tensor([[3], [4], [5], [3], [4], [5]])
    _, state = read(model, rule, names, [seg])
    table0 = model.embedding.weight
    new = state.fast["embedding.weight"][0]
    assert not torch.allclose(new[3], table0[3])  # a row read as input (and predicted)
    assert not torch.allclose(new[17], table0[17])  # a row never read: only the output end moved it
    # one tensor serves both ends: the next read uses the updated table for input and output alike, i.e. it
    # equals the static model with that one tied table put in its place
    nxt = torch.tensor([[5], [7], [3], [9]])
    loss, _ = read(model, rule, names, [nxt], state=state)
    swapped = copy.deepcopy(model)
    with torch.no_grad():
        swapped.embedding.weight.copy_(new)
    out = swapped(nxt[:-1], state.lm)
    torch.testing.assert_close(loss[0], token_nll(out.logits, nxt[1:]).mean(0))
    static = model(nxt[:-1], state.lm)
    assert not torch.allclose(loss[0], token_nll(static.logits, nxt[1:]).mean(0))


def test_static_weights_bit_identical_after_adaptive_pass():
    model, names, stats, learner = setup()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    model.decoder_bias.requires_grad_(False)  # reading freezes the static weights, then restores each flag
    ids = torch.randint(0, 23, (300,), generator=torch.Generator().manual_seed(0))
    read_stream(model, ids, 0, 5, rule=learner, names=names, restarts=[0, 120])
    read_stream(model, ids, 0, 5, rule=dyneval_for(learner, stats), names=names)
    for n, p in model.named_parameters():
        assert torch.equal(p, before[n]), n
        assert p.grad is None
        assert p.requires_grad == (n != "decoder_bias"), n


def test_dyneval_derives_its_anchor_once_per_frozen_theta0_and_at_every_step_otherwise():
    # flush·θ0 is computed once for a θ0 its owner hands over as `FrozenWeights` (a reading loop); a plain θ0
    # (written in place between steps, another one, or trained: requires grad) gives the rule's exact step each time
    torch.manual_seed(0)
    model = tiny_model(torch.float64).eval()
    names = select_dynamic(model, ["layers.*"])
    rule = DynEvalRule(names, random_stats(model, names), eta=0.01, lam=0.05, eps=1e-4, **DIRECTIONS_OFF)
    theta0 = {n: t.detach().clone() for n, t in static_weights(model, names).items()}
    fast = {n: t.unsqueeze(0) + 0.1 for n, t in theta0.items()}
    grads = {n: torch.randn_like(t) for n, t in fast.items()}

    def expected(th0):
        buf = lambda kind, n: rule.get_buffer(kind + "__" + n.replace(".", "__"))  # noqa: E731
        return {n: krause_step(fast[n], buf("flush", n) * th0[n], buf("flush", n), buf("gain", n), grads[n])
                for n in names}

    def step(th0):
        return rule(fast, grads, th0, torch.zeros(1), {})[0]

    frozen = FrozenWeights(theta0)
    for _ in range(2):  # the second call reads the anchor derived by the first
        for n, t in step(frozen).items():
            torch.testing.assert_close(t, expected(theta0)[n], rtol=1e-12, atol=1e-14)
    assert len(frozen._derived) == len(names)
    for t in theta0.values():
        t.mul_(1.5)  # in place: a plain θ0 is read afresh, and a new FrozenWeights derives the anchor anew
    for th0 in (theta0, FrozenWeights(theta0)):
        for n, t in step(th0).items():
            torch.testing.assert_close(t, expected(theta0)[n], rtol=1e-12, atol=1e-14)
    other = {n: t * -2.0 for n, t in theta0.items()}
    for n, t in step(other).items():
        torch.testing.assert_close(t, expected(other)[n], rtol=1e-12, atol=1e-14)
    trained = {n: t.clone().requires_grad_() for n, t in theta0.items()}
    out = step(trained)
    assert all(t.requires_grad for t in out.values())  # the gradient reaches a trained θ0


def test_dyneval_is_krauses_update_to_float_noise_over_many_segments():
    """θ += λ·decrate·(θ0 − θ) − η·g/(√v + ε), as Krause's dynamiceval.py computes it in float32, against the rule
    in float32 over 1500 segments, on a layer's weights and biases: the two stay within a few float32 roundings
    (of the tensor's largest |θ|) of each other and of the exact (float64) trajectory. A form whose coefficient of
    θ is rounded (keep·θ + flush·θ0 − gain·g, keep = 1 − flush) drifts away by up to 2⁻²⁵·|θ| per segment, all in
    one direction: by over 100 such roundings here."""
    torch.manual_seed(0)
    model = tiny_model().eval()
    names = ["layers.0.weight_hh", "layers.0.bias_ih"]
    stats = random_stats(model, names)
    lr, lam, eps = 0.002, 0.002, 1e-3  # Krause's λ: a weak decay, which a rounded keep = 1 − flush misstates most
    rule = DynEvalRule(names, stats, eta=lr, lam=lam, eps=eps, **DIRECTIONS_OFF)
    theta0 = {n: t.detach().clone() for n, t in static_weights(model, names).items()}
    ms = {n: stats.v[n].sqrt() for n in names}
    gsum = sum(float(ms[n].mean()) for n in names) / len(names)
    g = torch.Generator().manual_seed(1)
    grads = [{n: torch.randn(theta0[n].shape, generator=g).mul_(0.5) for n in names} for _ in range(1500)]
    ours = {n: t.unsqueeze(0).clone() for n, t in theta0.items()}
    krause = {n: t.clone() for n, t in theta0.items()}
    exact = {n: t.double() for n, t in theta0.items()}
    frozen = FrozenWeights(theta0)
    for seg in grads:
        ours = rule(ours, {n: seg[n].unsqueeze(0) for n in names}, frozen, torch.zeros(1), {})[0]
        for n in names:
            decrate = (ms[n] / gsum).clamp(max=1.0 / lam)
            krause[n] += lam * decrate * (theta0[n] - krause[n]) - lr * seg[n] / (ms[n] + eps)
            decrate64 = (ms[n].double() / gsum).clamp(max=1.0 / lam)
            exact[n] += (lam * decrate64 * (theta0[n].double() - exact[n])
                         - lr * seg[n].double() / (ms[n].double() + eps))
    for n in names:
        ulp = torch.finfo(torch.float32).eps * float(exact[n].abs().max())
        assert float((ours[n][0].double() - exact[n]).abs().max()) < 20 * ulp, n
        assert float((ours[n][0] - krause[n]).abs().max()) < 20 * ulp, n


def test_untrained_cheap_rule_reads_bit_identically_to_dyneval():
    """rule=cheap at φ = 0 is dynamic evaluation exactly: the same step with scales that are exactly 1. Every
    parameter adapting (factored table and LSTM matrices, dense biases), one stream and three (padded segments),
    with article restarts."""
    model = tiny_model().eval()
    names = select_dynamic(model, ["*"])
    stats = random_stats(model, names)
    kw = dict(eta=0.05, lam=0.02, eps=1e-3, **DIRECTIONS_OFF)
    dyneval, cheap = DynEvalRule(names, stats, **kw), ContextRule(names, stats, **kw)
    ids = torch.randint(0, 23, (83,), generator=torch.Generator().manual_seed(2))
    for starts, restarts in (([0], [30]), ([0, 25, 51], [12, 40])):
        a = read_stream(model, ids, 0, 5, rule=dyneval, names=names, starts=starts, restarts=restarts)
        b = read_stream(model, ids, 0, 5, rule=cheap, names=names, starts=starts, restarts=restarts)
        assert torch.equal(a, b)
        assert not torch.equal(a, read_stream(model, ids, 0, 5, starts=starts))  # it did adapt
