"""rule=cheap: Krause's rule scaled per (tensor, stream) from shared context. It starts as dynamic evaluation,
its decay cannot overshoot θ0, its context resets at article boundaries, it meta-trains, checkpoints and resumes
exactly, and scripts/evaluate.py's path loads it from a stage-2 checkpoint."""
import pytest
import torch

from dynamic_helpers import random_stats, read, read_with_resets, tiny_model, tokens
from dynlm.dynamic.cheap_learner import ContextRule, context_features
from dynlm.dynamic.dyneval import DIRECTIONS_OFF, DynEvalRule
from dynlm.dynamic.reading_state import fresh_state
from dynlm.eval.evaluate import evaluate
from dynlm.model import static_weights
from eval_helpers import compose_eval
from hydra_helpers import meta_overrides, records, straight_and_resumed

KRAUSE = dict(eta=0.002, lam=0.02, eps=0.001, **DIRECTIONS_OFF)


def _setup(dtype=torch.float32, lam=KRAUSE["lam"]):
    model = tiny_model(dtype)
    names = [n for n, _ in model.named_parameters() if n.startswith("layers.")]
    stats = random_stats(model, names)
    kw = {**KRAUSE, "lam": lam}
    return model.eval(), names, stats, ContextRule(names, stats, **kw).to(dtype), DynEvalRule(names, stats, **kw)


def test_untrained_cheap_rule_is_dynamic_evaluation_over_segments_with_resets():
    model, names, _, cheap, dyneval = _setup()
    segs = tokens(7, 5, 3)
    no, yes = torch.zeros(3, dtype=torch.bool), torch.ones(3, dtype=torch.bool)
    resets = [no, no, torch.tensor([False, True, False]), no, yes, no, torch.tensor([True, False, False])]
    loss_c, s_c = read_with_resets(model, cheap, names, segs, resets)
    loss_d, s_d = read_with_resets(model, dyneval, names, segs, resets)
    torch.testing.assert_close(loss_c, loss_d, rtol=1e-5, atol=1e-6)
    theta0 = static_weights(model, names)
    for n in names:
        torch.testing.assert_close(s_c.fast[n], s_d.fast[n], rtol=1e-5, atol=1e-6)
        assert not torch.equal(s_c.fast[n], theta0[n].expand_as(s_c.fast[n]))  # it did adapt
    # the context counts segments since each stream's last reset
    torch.testing.assert_close(s_c.learner["context"][:, 0], torch.tensor([1.0, 3.0, 3.0]))


def test_context_features_mark_boundaries_position_and_surprise():
    loss = torch.tensor([5.0, 7.0])
    feats, ctx = context_features(loss, torch.zeros(1, 2))  # a fresh article: no running mean yet
    torch.testing.assert_close(feats[:, 0], torch.zeros(2))
    torch.testing.assert_close(feats[:, 3], torch.ones(2))
    torch.testing.assert_close(ctx, torch.tensor([[1.0, 5.0], [1.0, 7.0]]))
    feats, ctx = context_features(torch.tensor([6.0, 7.0]), ctx)
    torch.testing.assert_close(feats[:, 0], torch.tensor([1.0, 0.0]))  # loss above the running mean
    torch.testing.assert_close(feats[:, 3], torch.zeros(2))
    assert float(feats[0, 2]) > 0 and float(ctx[0, 0]) == 2.0
    torch.testing.assert_close(ctx[:, 1], torch.tensor([5.1, 7.0]))


@pytest.mark.parametrize("streams", [1, 3])  # one stream on CPU takes the scalar path
def test_reading_without_a_graph_updates_exactly_as_the_differentiable_form(streams):
    model, names, _, cheap, _ = _setup(torch.float64)
    cheap = cheap.double()
    with torch.no_grad():  # a trained-looking φ: scales differ per tensor and stream
        cheap.weight.normal_(0.0, 0.3)
        cheap.bias.normal_(0.0, 0.3)
    theta0 = {n: t.detach() for n, t in static_weights(model, names).items()}
    fast = {n: t + 0.1 * torch.randn(streams, *t.shape, dtype=t.dtype) for n, t in theta0.items()}
    grads = {n: torch.randn_like(t) for n, t in fast.items()}
    loss, state = torch.tensor([4.0, 5.0, 6.0][:streams], dtype=torch.float64), cheap.init_learner_state(fast)
    kept = {n: g.clone() for n, g in grads.items()}
    with torch.enable_grad():
        graph, _, _ = cheap(fast, grads, theta0, loss, state)
    with torch.no_grad():
        for _ in range(2):  # the second call reads the cached flush·θ0
            fast_path, _, _ = cheap(fast, grads, theta0, loss, state)
            for n in names:
                torch.testing.assert_close(fast_path[n], graph[n], rtol=1e-12, atol=1e-14, msg=n)
    assert all(torch.equal(grads[n], kept[n]) for n in names)  # the gradients it read are left as they were


def test_a_large_learned_decay_stops_at_theta0_and_never_overshoots():
    model, names, _, cheap, _ = _setup(lam=0.5)
    with torch.no_grad():
        cheap.bias[1].fill_(8.0)  # s_decay = e^8 ≫ 1 / max flush: capped
    theta0 = {n: t.detach() for n, t in static_weights(model, names).items()}
    fast = {n: (t + torch.randn_like(t)).unsqueeze(0).expand(2, *t.shape) for n, t in theta0.items()}
    zeros = {n: torch.zeros_like(t) for n, t in fast.items()}
    with torch.no_grad():
        new, _, diag = cheap(fast, zeros, theta0, torch.ones(2), cheap.init_learner_state(fast))
    for n in names:
        towards = (new[n] - theta0[n]) / (fast[n] - theta0[n])  # 1 − effective flush, per coordinate
        assert float(towards.min()) >= -1e-5 and float(towards.max()) <= 1.0 + 1e-6, n
        assert float(towards.min()) <= 1e-5, n  # the coordinate with the largest flush reaches θ0 exactly
    assert float(diag["scale/decay"]) > 1.0


def test_meta_gradient_reaches_every_parameter_and_matches_finite_differences():
    model, names, _, cheap, _ = _setup(torch.float64)
    with torch.no_grad():
        g = torch.Generator().manual_seed(3)
        for p in cheap.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    segs = tokens(4, 3, 2)

    def meta_loss():
        # second order: the finite differences also see φ's effect on later segments' gradients
        losses, _ = read(model, cheap, names, segs, keep_graph=True, second_order=True)
        return losses.mean()

    cheap.zero_grad()
    meta_loss().backward()
    for name, p in cheap.named_parameters():
        assert float(p.grad.abs().sum()) > 0, name
    per_feature = cheap.weight.grad.abs().sum(1)  # [step | decay, feature]
    assert bool((per_feature[0] > 0).all())  # every feature moves the step size
    # and the decay, but for the boundary flag: on a boundary θ = θ0, so there is nothing to decay
    assert bool((per_feature[1, [0, 1, 2, 4]] > 0).all()) and float(per_feature[1, 3]) == 0.0
    for name, p in cheap.named_parameters():
        flat, grad = p.detach().view(-1), p.grad.view(-1)
        for idx in (0, flat.numel() // 2, flat.numel() - 1):
            with torch.no_grad():
                flat[idx] += 1e-6
                up = float(meta_loss())
                flat[idx] -= 2e-6
                down = float(meta_loss())
                flat[idx] += 1e-6
            assert abs((up - down) / 2e-6 - float(grad[idx])) <= 1e-6 + 1e-4 * abs(float(grad[idx])), (name, idx)


def test_a_learner_state_at_its_shared_initial_value_is_saved_one_row_per_stream():
    model, names, _, cheap, _ = _setup()
    theta0 = static_weights(model, names)
    state = fresh_state(model, theta0, 3, cheap.init_learner_state({n: t.unsqueeze(0) for n, t in theta0.items()}))
    assert state.learner["context"].shape == (1, 2)
    assert state.to_dict()["learner"]["context"].shape == (3, 2)  # gathered and sharded by rows


SIZES = {"rule": "cheap", "meta.batch_size": 3, "meta.seg_len": 4, "meta.window": 3, "meta.gradstat_tokens": 600,
         "meta.valid_max_tokens": 300, "trainer.max_steps": 6, "trainer.eval_interval": 3}


@pytest.mark.slow
def test_stage2_with_meta_cheap_trains_resumes_exactly_and_evaluates(lm_checkpoint, tmp_path):
    data, ckpt = lm_checkpoint
    over = meta_overrides(data, ckpt, **SIZES)
    a, b = straight_and_resumed(over, tmp_path)
    assert a["progress"]["step"] == b["progress"]["step"] == 6 and a["config"]["rule"]["name"] == "cheap"
    assert set(a["meta_learner"]) == {"weight", "bias"}
    assert float(a["meta_learner"]["weight"].abs().sum()) > 0  # a few windows moved φ off zero
    for k in a["meta_learner"]:
        torch.testing.assert_close(a["meta_learner"][k], b["meta_learner"][k], rtol=0, atol=0, msg=k)
    for part in ("fast", "learner"):
        for n in a["reading_state"][part]:
            torch.testing.assert_close(a["reading_state"][part][n], b["reading_state"][part][n], rtol=0, atol=0)
    assert a["reading_state"]["learner"]["context"].shape == (3, 2)
    steps = [r for r in records(tmp_path / "full") if "meta/loss" in r]
    assert all(r["meta/scale/step"] > 0 and r["meta/scale/decay"] > 0 for r in steps)

    cfg = compose_eval([f"checkpoint={tmp_path / 'full' / 'checkpoints' / 'last.pt'}", "split=valid",
                        "eval.max_articles=1", "eval.progress_bar=false", "methods=[static,dyneval,learned]"])
    results = evaluate(cfg, tmp_path / "eval")
    assert all(results["methods"][m]["ppl"] > 0 for m in ("static", "dyneval", "learned"))
    assert results["methods"]["learned"]["ppl"] != results["methods"]["dyneval"]["ppl"]  # the trained φ was used
