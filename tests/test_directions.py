"""Update directions beyond Krause's (issue #25), options of rule=dyneval and rule=cheap: each at 0 reads bit for bit
as dynamic evaluation does, and each set changes the reading as its formula says (a float64 hand computation on a
tiny model, every parameter adapting: the factored table and LSTM matrices, the dense biases)."""
import pytest
import torch

from dynamic_helpers import random_stats, read_with_resets, tiny_model, tokens
from dynlm.config import ConfigValueError
from dynlm.data import batchify
from dynlm.dynamic.cheap_learner import ContextRule
from dynlm.dynamic.dyneval import DIRECTIONS_OFF, MOMENTUM, DynEvalRule
from dynlm.dynamic.fast_weights import select_dynamic
from dynlm.dynamic.grad_stats import GradStats, measure_grad_stats
from dynlm.dynamic.reading import read_stream
from dynlm.dynamic.rules import RuleConfigError, build_rule, check_rule_config, rule_config
from dynlm.dynamic.segment import segment_losses
from dynlm.eval.evaluate import evaluate
from dynlm.eval.inputs import fixed_rule_settings
from dynlm.kernels.factored_gradient import FactoredGradient, TableGradient
from dynlm.maths.directions import delta_forget, delta_forget_factors
from dynlm.model import static_weights
from dynlm.run.checkpoint import load_checkpoint
from dynlm.train import train
from eval_helpers import compose_eval
from hydra_helpers import compose_config, meta_overrides, records

KRAUSE = dict(eta=0.05, lam=0.02, eps=1e-3)


class KrauseOnly(DynEvalRule):
    """Dynamic evaluation as it was before the options: Krause's step of every tensor, no learner state."""

    def forward(self, fast, grads, theta0, seg_loss, learner_state):
        return {n: self.krause_update(n, fast[n], theta0, grads[n]) for n in self.names}, learner_state, {}


def _model(dtype=torch.float32):
    model = tiny_model(dtype).eval()
    names = select_dynamic(model, ["*"])
    return model, names, random_stats(model, names)


def _read(model, rule, names, ids, starts, restarts):
    return read_stream(model, ids, 0, 5, rule=rule, names=names, starts=starts, restarts=restarts)


@pytest.mark.parametrize("name", ["dyneval", "cheap"])
def test_every_direction_off_reads_bit_identically_to_dynamic_evaluation(name):
    """The rule built from its config with every option at 0 (the defaults) is today's dynamic evaluation: the
    same per-token losses, bit for bit, one stream and three (padded segments), with article restarts; and it
    keeps no learner state for them (a checkpoint holds nothing more)."""
    model, names, stats = _model()
    cfg = rule_config(name)
    assert {k: cfg[k] for k in DIRECTIONS_OFF} == DIRECTIONS_OFF
    rule = build_rule(rule_config(name, like={**KRAUSE, **DIRECTIONS_OFF}), names, stats)
    assert set(rule.init_learner_state(static_weights(model, names))) <= {"context"}
    krause = KrauseOnly(names, stats, **KRAUSE, **DIRECTIONS_OFF)
    ids = torch.randint(0, 23, (83,), generator=torch.Generator().manual_seed(2))
    for starts, restarts in (([0], [30]), ([0, 25, 51], [12, 40])):
        assert torch.equal(_read(model, rule, names, ids, starts, restarts),
                           _read(model, krause, names, ids, starts, restarts))


def _hand_reading(model, names, stats, segs, resets, momentum_beta=0.0, delta_decay=0.0, whiten=False,
                  whiten_eps=0.1):
    """Per-segment losses and final weights of the rule's formulas written out in float64: g by autograd (a matrix's
    whitened: g (A / (tr A / C) + εI)⁻¹, A its input moment), then m' = β m + η/(√v + ε) ⊙ g,
    θ' = θ + min(λ √v / decay_norm, 1) ⊙ (θ0 − θ) − m' − μ (θ − θ0) P for a matrix, P = Uᵀ (U Uᵀ + εI)⁻¹ U of the
    inputs U it multiplied, ε = 10⁻³ · mean ‖u_t‖² (m = 0 and θ = θ0 at a reset)."""
    theta0 = static_weights(model, names)
    b = segs[0].shape[1]
    fast = {n: t.unsqueeze(0).repeat(b, *[1] * t.dim()) for n, t in theta0.items()}
    m = {n: torch.zeros_like(t) for n, t in fast.items()}
    state = model.init_state(b)
    gain = {n: KRAUSE["eta"] / (stats.v[n].sqrt() + KRAUSE["eps"]) for n in names}
    flush = {n: (KRAUSE["lam"] * stats.v[n].sqrt() / stats.decay_norm).clamp(max=1.0) for n in names}
    losses = []
    for seg, reset in zip(segs, resets):
        keep = (~reset).double()
        state = [(h * keep[:, None], c * keep[:, None]) for h, c in state]
        for n in names:
            k = keep.view(-1, *[1] * theta0[n].dim())
            fast[n] = k * fast[n] + (1 - k) * theta0[n]
            m[n] = k * m[n]
        leaves = {n: t.detach().requires_grad_() for n, t in fast.items()}
        inputs = {}
        with torch.enable_grad():
            loss, _, state = segment_losses(model, leaves, state, seg[:-1], seg[1:], inputs=inputs)
            grads = torch.autograd.grad(loss.sum(), list(leaves.values()))
        state = [(h.detach(), c.detach()) for h, c in state]
        for n, g in zip(names, grads):
            if whiten and fast[n].dim() == 3:
                a = stats.input_moments[n]
                eye = torch.eye(a.shape[0], dtype=a.dtype)
                g = g @ torch.linalg.inv(a * (a.shape[0] / torch.trace(a)) + whiten_eps * eye)
            m[n] = momentum_beta * m[n] + gain[n] * g
            new = fast[n] + flush[n] * (theta0[n] - fast[n]) - m[n]
            if fast[n].dim() == 3:
                u = inputs[n].transpose(0, 1)  # [B, L, C]
                gram = u @ u.transpose(1, 2)
                eps = 1e-3 * gram.diagonal(dim1=1, dim2=2).mean(-1)
                eye = torch.eye(u.shape[1], dtype=u.dtype)
                p = u.transpose(1, 2) @ torch.linalg.inv(gram + eps[:, None, None] * eye) @ u
                new = new - delta_decay * (fast[n] - theta0[n]) @ p
            fast[n] = new
        losses.append(loss.detach())
    return torch.stack(losses), fast, m


def _random_moments(model, names):
    """Input moments of every matrix, far from the identity: a few directions dominate."""
    g = torch.Generator().manual_seed(8)
    params = dict(model.named_parameters())
    out = {}
    for n in names:
        if params[n].dim() == 2:
            c = params[n].shape[1]
            a = torch.randn(c, c, generator=g, dtype=torch.float64) * torch.logspace(0, -2, c, dtype=torch.float64)
            out[n] = a @ a.t()
    return out


def _resets(b):
    no = torch.zeros(b, dtype=torch.bool)
    return [no, no, torch.tensor([False, True]), no, no]


@pytest.mark.parametrize("keep_graph", [False, True])  # evaluation's factored reading; stage 2's graph
@pytest.mark.parametrize("name", ["dyneval", "cheap"])
@pytest.mark.parametrize("options", [{"momentum_beta": 0.7}, {"delta_decay": 0.6}, {"whiten": True, "whiten_eps": 0.3},
                                     {"momentum_beta": 0.5, "delta_decay": 0.3, "whiten": True}])
def test_each_direction_changes_the_reading_as_its_formula_says(options, name, keep_graph):
    """The momentum carries the step across segments and restarts with the article; the delta-rule decay forgets
    along the inputs just read: without a graph those are the factored gradients' u, with one (stage 2) what the
    model recorded."""
    model, names, stats = _model(torch.float64)
    stats.input_moments = _random_moments(model, names)
    cls = DynEvalRule if name == "dyneval" else ContextRule
    rule = cls(names, stats, **KRAUSE, **{**DIRECTIONS_OFF, **options}).double()
    assert rule.takes_inputs == ("delta_decay" in options)
    segs, resets = tokens(5, 5, 2, seed=3), _resets(2)
    losses, state = read_with_resets(model, rule, names, segs, resets, keep_graph)
    hand_losses, hand_fast, hand_m = _hand_reading(model, names, stats, segs, resets, **options)
    torch.testing.assert_close(losses.detach(), hand_losses, rtol=1e-10, atol=1e-12)
    for n in names:
        torch.testing.assert_close(state.fast[n].detach(), hand_fast[n], rtol=1e-9, atol=1e-12)
        if "momentum_beta" in options:
            torch.testing.assert_close(state.learner[MOMENTUM + n].detach(), hand_m[n], rtol=1e-9, atol=1e-12)
    # it is not Krause's reading
    plain, _, _ = _hand_reading(model, names, stats, segs, resets)
    assert not torch.allclose(losses.detach(), plain, rtol=1e-6, atol=0)


def test_the_recorded_inputs_are_what_each_matrix_multiplied():
    """An LSTM matrix's gradient is Σ_t d_t u_tᵀ: it lies in the span of the recorded inputs (G = G U⁺ U); the first
    h_{t−1} of a fresh state is zero, so U⁺ is the pseudo-inverse."""
    model, names, _ = _model(torch.float64)
    theta0 = static_weights(model, names)
    fast = {n: t.unsqueeze(0).repeat(2, *[1] * t.dim()).requires_grad_() for n, t in theta0.items()}
    seg = tokens(1, 5, 2, seed=6)[0]
    inputs = {}
    with torch.enable_grad():
        loss, _, _ = segment_losses(model, fast, model.init_state(2), seg[:-1], seg[1:], inputs=inputs)
        grads = dict(zip(names, torch.autograd.grad(loss.sum(), list(fast.values()))))
    matrices = [n for n in names if theta0[n].dim() == 2 and n != model.TIED_TABLE]
    assert set(inputs) == set(matrices) | {model.TIED_TABLE}
    for n in matrices:
        u = inputs[n].transpose(0, 1)
        p = torch.linalg.pinv(u) @ u
        torch.testing.assert_close(grads[n] @ p, grads[n], rtol=1e-8, atol=1e-12)
        assert float(grads[n].abs().max()) > 1e-6


def test_the_low_rank_delta_decay_is_the_projection():
    g = torch.Generator().manual_seed(7)
    shapes = ((3, 9, 7), (9, 7), (3, 4, 7))
    theta, theta0, u = (torch.randn(*shape, generator=g, dtype=torch.float64) for shape in shapes)
    a, k = delta_forget_factors(theta, theta0, u, 0.4)
    torch.testing.assert_close(a @ k, delta_forget(theta, theta0, u, 0.4), rtol=1e-12, atol=1e-12)
    # μ = 1 with orthogonal inputs spanning every direction forgets all of the memory but the ridge's 10⁻³ / (1 + 10⁻³)
    full = 2.0 * torch.linalg.qr(torch.randn(3, 7, 7, generator=g, dtype=torch.float64))[0]
    left = theta - theta0 - delta_forget(theta, theta0, full, 1.0)
    torch.testing.assert_close(left, (theta - theta0) * (1e-3 / (1 + 1e-3)), rtol=1e-9, atol=1e-12)


def test_the_momentum_is_saved_one_row_per_stream_and_reset_zeroes_only_its_stream():
    model, names, stats = _model()
    rule = DynEvalRule(names, stats, **KRAUSE, **{**DIRECTIONS_OFF, "momentum_beta": 0.5})
    segs = tokens(2, 5, 3)
    _, state = read_with_resets(model, rule, names, segs, [torch.zeros(3, dtype=torch.bool)] * 2)
    saved = state.to_dict()["learner"]
    assert set(saved) == {MOMENTUM + n for n in names}
    assert all(t.shape[0] == 3 and bool(t.abs().sum() > 0) for t in saved.values())
    reset = state.reset(torch.tensor([False, True, False]), static_weights(model, names))
    for n in names:
        m = reset.learner[MOMENTUM + n]
        assert bool((m[1] == 0).all()) and torch.equal(m[0], state.learner[MOMENTUM + n][0])


def test_momentum_passes_the_meta_gradient_to_the_cheap_rule():
    """Stage 2 differentiates the reading w.r.t. φ through the carried momentum."""
    model, names, stats = _model(torch.float64)
    rule = ContextRule(names, stats, **KRAUSE, **{**DIRECTIONS_OFF, "momentum_beta": 0.5}).double()
    segs = tokens(3, 5, 2, seed=4)
    losses, _ = read_with_resets(model, rule, names, segs, [torch.zeros(2, dtype=torch.bool)] * 3, keep_graph=True)
    losses[1:].sum().backward()
    assert float(rule.bias.grad.abs().sum()) > 0 and float(rule.weight.grad.abs().sum()) > 0



def test_evaluation_and_stage2_set_the_directions_as_they_set_krauses_hyperparameters():
    """eval.dyneval_<key> sets dyneval's option (over where a stage-2 checkpoint's learned rule started), rule.<key>
    sets stage 2's rule and its dyneval baseline; a value out of range fails before any work, named as written."""
    e = compose_eval(["checkpoint=x.pt", "eval.dyneval_momentum_beta=0.3", "eval.dyneval_delta_decay=0.2",
                      "eval.dyneval_whiten=true", "eval.dyneval_whiten_eps=0.05"]).eval
    chosen = fixed_rule_settings("dyneval", None, e)
    assert (chosen.momentum_beta, chosen.delta_decay, chosen.whiten, chosen.whiten_eps) == (0.3, 0.2, True, 0.05)
    learned = {"name": "cheap", **KRAUSE, **DIRECTIONS_OFF, "momentum_beta": 0.6}
    assert fixed_rule_settings("dyneval", learned, compose_eval(["checkpoint=x.pt"]).eval).momentum_beta == 0.6
    assert fixed_rule_settings("dyneval", learned, e).momentum_beta == 0.3
    with pytest.raises(ConfigValueError, match=r"eval\.dyneval_momentum_beta=1\.0 is out of range"):
        fixed_rule_settings("dyneval", None, compose_eval(["checkpoint=x.pt", "eval.dyneval_momentum_beta=1.0"]).eval)
    cfg = compose_config(["stage=meta", "rule=cheap", "rule.momentum_beta=0.6", "rule.delta_decay=0.1",
                          "rule.whiten=true"])
    model, names, stats = _model()
    stats.input_moments = {n: t.float() for n, t in _random_moments(model, names).items()}
    for rule in build_rule(cfg.rule, names, stats), build_rule(rule_config("dyneval", like=cfg.rule), names, stats):
        # the dyneval one: stage 2's validation
        assert (rule.momentum_beta, rule.delta_decay, bool(rule.whitened_names)) == (0.6, 0.1, True)
    with pytest.raises(ConfigValueError, match=r"rule\.momentum_beta=1\.0 is out of range"):
        check_rule_config(compose_config(["rule=dyneval", "rule.momentum_beta=1.0"]).rule)


def test_whitening_reads_the_input_moments_measured_with_the_gradient_statistics():
    """measure_grad_stats gives each matrix the mean of u uᵀ over the tokens read (the first layer's inputs are the
    looked-up rows); they are saved and loaded with v, statistics saved before them load without, and the rule
    then refuses to whiten, saying how to measure them."""
    model, names, _ = _model(torch.float64)
    ids = torch.randint(0, 23, (61,), generator=torch.Generator().manual_seed(9))
    stats = measure_grad_stats(model, names, ids, streams=3, seg_len=4)
    rows = batchify(ids, 3)[:-1]  # every row is read as an input but the last (a target only)
    emb = model.embedding.weight.detach()[rows.reshape(-1)]
    assert stats.tokens == rows.numel()
    torch.testing.assert_close(stats.input_moments["layers.0.weight_ih"], emb.t() @ emb / rows.numel())
    matrices = {n for n in names if dict(model.named_parameters())[n].dim() == 2}
    assert set(stats.input_moments) == matrices
    again = GradStats.from_state_dict(stats.state_dict())
    assert all(torch.equal(again.input_moments[n], stats.input_moments[n]) for n in matrices)
    assert set(stats.restricted(["layers.0.weight_ih", "layers.0.bias_ih"]).input_moments) == {"layers.0.weight_ih"}
    old = GradStats.from_state_dict({"v": stats.state_dict()["v"], "tokens": stats.tokens})
    assert old.input_moments == {}
    DynEvalRule(names, old, **KRAUSE, **DIRECTIONS_OFF)  # without whitening they are not needed
    with pytest.raises(RuleConfigError, match="rule.whiten needs the input moments"):
        DynEvalRule(names, old, **KRAUSE, **{**DIRECTIONS_OFF, "whiten": True})


def test_a_whitened_factored_gradient_is_the_dense_gradient_times_the_inverse():
    g = torch.Generator().manual_seed(10)

    def r(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64)

    m = r(4, 4)
    lstm = FactoredGradient(r(2, 12, 3), r(2, 3, 4))
    table = TableGradient(r(3, 2, 9), r(3, 2, 4), torch.randint(0, 9, (3, 2), generator=g), r(3, 2, 4))
    for grad in lstm, table:
        torch.testing.assert_close(grad.times(m).dense(), grad.dense() @ m, rtol=1e-12, atol=1e-12)
        assert type(grad.times(m)) is type(grad)


@pytest.mark.slow
def test_stage2_and_evaluation_read_with_every_direction(lm_checkpoint, tmp_path):
    """rule=cheap with every direction trains in stage 2 (its validation's dyneval with them too) and is saved with
    its input moments and momenta; evaluate.py runs it, its dyneval baseline from where it started, and dyneval on
    the stage-1 checkpoint with the eval.dyneval_* keys (moments measured there)."""
    data, ckpt = lm_checkpoint
    options = {"rule.momentum_beta": 0.5, "rule.delta_decay": 0.2, "rule.whiten": "true"}
    sizes = {"rule": "cheap", "meta.batch_size": 2, "meta.seg_len": 4, "meta.window": 2, "meta.gradstat_tokens": 300,
             "meta.valid_max_tokens": 100, "trainer.max_steps": 2, "trainer.eval_interval": 2}
    train(compose_config(meta_overrides(data, ckpt, **sizes, **options)), tmp_path / "meta")
    last = load_checkpoint(tmp_path / "meta" / "checkpoints" / "last.pt")
    names = last["dynamic_names"]
    matrices = {n for n in names if last["grad_stats"]["v"][n].dim() == 2}
    assert matrices and set(last["grad_stats"]["input_moments"]) == matrices
    assert {MOMENTUM + n for n in names} <= set(last["reading_state"]["learner"])
    validated = [r["valid/dyneval/loss"] for r in records(tmp_path / "meta") if "valid/dyneval/loss" in r]
    assert validated and all(0 < loss < 20 for loss in validated)

    common = ["split=valid", "eval.max_articles=1", "eval.progress_bar=false", f"data.cache_dir={tmp_path / 'cache'}"]
    results = evaluate(compose_eval([f"checkpoint={tmp_path / 'meta' / 'checkpoints' / 'last.pt'}", *common]),
                       tmp_path / "eval")
    assert (results["dyneval"]["momentum_beta"], results["dyneval"]["delta_decay"], results["dyneval"]["whiten"]) == (
        0.5, 0.2, True)
    assert all(results["methods"][m]["ppl"] > 0 for m in ("static", "dyneval", "learned"))

    stage1 = [f"checkpoint={ckpt}", f"data.dir={data}", "methods=[static,dyneval]", "eval.gradstat_tokens=300", *common]
    plain = evaluate(compose_eval(stage1), tmp_path / "plain")
    moved = evaluate(compose_eval([*stage1, "eval.dyneval_momentum_beta=0.5", "eval.dyneval_delta_decay=0.2",
                                   "eval.dyneval_whiten=true"]), tmp_path / "moved")
    assert moved["dyneval"]["whiten"] and moved["methods"]["dyneval"]["ppl"] > 0
    assert moved["methods"]["dyneval"]["nll"] != plain["methods"]["dyneval"]["nll"]
