"""The gated meta-learner and Krause's dynamic evaluation."""
import copy

import torch

from dynlm.dynamic.fast_weights import select_dynamic
from dynlm.dynamic.gated_update import gated_update, krause_gate_logits
from dynlm.dynamic.reading import read_stream
from dynlm.dynamic.rules import DynEvalRule
from dynlm.model import static_weights, token_nll

from dynamic_helpers import dyneval_for, random_stats, read, setup, tiny_model, tokens


def test_krause_rule_is_the_gated_update_with_constant_gates():
    torch.manual_seed(0)
    theta, theta0, g = torch.randn(50), torch.randn(50), torch.randn(50)
    rms = torch.rand(50) + 0.1
    lr, lam, eps, u = 0.002, 0.02, 0.001, 0.5
    ghat = g / (rms + eps)
    decrate = rms / rms.mean()
    krause = theta - lr * ghat + lam * decrate * (theta0 - theta)
    copy, update, flush = krause_gate_logits(rms, float(rms.mean()), lam, u).exp()
    torch.testing.assert_close(copy + update + flush, torch.ones(50))
    torch.testing.assert_close(gated_update(theta, theta0, (lr / u) * ghat, copy, update, flush), krause)


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
    rule = DynEvalRule(names, stats, lr=0.01, lam=0.02, eps=1e-3, update=0.5)
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
    ids = torch.randint(0, 23, (300,), generator=torch.Generator().manual_seed(0))
    read_stream(model, ids, 0, 5, rule=learner, names=names, restarts=[0, 120])
    read_stream(model, ids, 0, 5, rule=dyneval_for(learner, stats), names=names)
    for n, p in model.named_parameters():
        assert torch.equal(p, before[n]), n
        assert p.grad is None
