"""Factored gradients (the adapting tied table's and the per-stream LSTM matrices'), and the Krause step that
consumes them without forming them."""
import pytest
import torch
from torch._dynamo.utils import counters
from torch.func import functional_call

from dynamic_helpers import VOCAB, random_stats, tiny_model
from dynlm.config import ModelConfig
from dynlm.dynamic.cheap_learner import ContextRule
from dynlm.dynamic.dyneval import DIRECTIONS_OFF, DynEvalRule
from dynlm.dynamic.fast_weights import per_stream, select_dynamic
from dynlm.dynamic.reading import read_stream
from dynlm.dynamic.reading_state import fresh_state
from dynlm.dynamic.segment import _gradients_factored, adapt_segment, segment_losses
from dynlm.kernels import factored_gradient
from dynlm.kernels.factored_gradient import FactoredGradient, FactoredStep, TableGradient
from dynlm.maths.krause import krause_step
from dynlm.model import AWDLSTM, build_model, static_weights, token_nll

TABLE = "embedding.weight"


def _segment(streams: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, VOCAB, (5, streams), generator=g)
    x[3] = x[0]  # a row looked up twice in each stream: its lookup gradients add up
    return x, torch.randint(0, VOCAB, (5, streams), generator=g)


def test_factored_table_gradient_is_autograds_dense_one():
    model = tiny_model(torch.float64).eval()
    x, y = _segment(streams=3)
    fast = {n: t.detach().clone().requires_grad_() for n, t in per_stream(static_weights(model, [TABLE]), 3).items()}
    loss = token_nll(functional_call(model, fast, (x, model.init_state(3))).logits, y).mean(0).sum()
    (expected,) = torch.autograd.grad(loss, [fast[TABLE]])

    out = functional_call(model, fast, (x, model.init_state(3)), {"detach_decoder_table": True})
    d_embedded, d_logits = torch.autograd.grad(token_nll(out.logits, y).mean(0).sum(), [out.embedded, out.logits])
    grad = TableGradient(d_logits, out.last_dropped.detach(), x, d_embedded)
    torch.testing.assert_close(grad.dense(), expected, rtol=1e-12, atol=1e-14)
    # the decoder's part of a block of rows is that block of the whole (lookup rows aside)
    decoder_only = TableGradient(d_logits, out.last_dropped.detach(), x, torch.zeros_like(d_embedded)).dense()
    torch.testing.assert_close(grad.rows(7, 19), decoder_only[:, 7:19])


@pytest.mark.parametrize("training", [False, True])
def test_every_dynamic_gradient_from_the_factored_path_is_autograds(training):
    """Three streams, every parameter adapting, weights already per stream: the LSTM matrices' gradients come as
    factors from the recurrences' backward, the table's as a `TableGradient`, the rest dense; each equals what
    autograd forms. In training mode DropConnect makes W_hh a product of the weights, whose gradient autograd
    then forms through the mask (W_ih stays factored)."""
    model = tiny_model(torch.float64, dropout=True).train(training)
    names = select_dynamic(model, ["*"])
    g = torch.Generator().manual_seed(2)
    fast = {n: (t.unsqueeze(0) + 0.01 * torch.randn(3, *t.shape, generator=g, dtype=t.dtype)).requires_grad_()
            for n, t in static_weights(model, names).items()}
    x, y = _segment(streams=3)
    torch.manual_seed(11)
    _, _, _, grads, _ = _gradients_factored(model, fast, model.init_state(3), x, y, None, set(), {})
    torch.manual_seed(11)  # the same dropout masks
    loss = segment_losses(model, fast, model.init_state(3), x, y)[0].sum()
    expected = dict(zip(names, torch.autograd.grad(loss, [fast[n] for n in names])))
    for n in names:
        dropped = training and n.endswith("weight_hh")
        if n == TABLE:
            assert isinstance(grads[n], TableGradient)
        elif n.endswith(("weight_ih", "weight_hh")) and not dropped:
            assert isinstance(grads[n], FactoredGradient), n
            torch.testing.assert_close(grads[n].norms(), torch.linalg.vector_norm(expected[n].flatten(1), dim=1))
        else:
            assert isinstance(grads[n], torch.Tensor), n
        got = grads[n].dense() if isinstance(grads[n], FactoredGradient) else grads[n]
        torch.testing.assert_close(got, expected[n], rtol=1e-10, atol=1e-13, msg=n)


def test_a_weight_read_beyond_the_recurrence_is_refused():
    """Only the recurrence's part of a weight's gradient is factored: a model that reads the weight elsewhere
    too would lose the rest, so the factored path says so instead of updating with part of the gradient."""

    class Peeking(AWDLSTM):
        def forward(self, tokens, state, detach_decoder_table=False, factors=None):
            out = super().forward(tokens, state, detach_decoder_table, factors)
            return out._replace(logits=out.logits + self.layers[0].weight_ih.mean())

    sizes = dict(emb_size=6, hidden_size=8, num_layers=2, init_range=0.1)
    model = Peeking(VOCAB, **sizes, dropout=0.0, dropouth=0.0, dropouti=0.0, dropoute=0.0, wdrop=0.0).double().eval()
    names = select_dynamic(model, ["layers.*"])
    fast = {n: t.detach().unsqueeze(0).repeat(2, *([1] * t.dim())).requires_grad_()
            for n, t in static_weights(model, names).items()}
    x, y = _segment(streams=2)
    with pytest.raises(RuntimeError, match="read beyond the LSTM recurrences"):
        _gradients_factored(model, fast, model.init_state(2), x, y, None, set(), {})


def test_blockwise_step_is_the_dense_step_whatever_the_block():
    torch.manual_seed(0)
    streams, rows, width = 2, VOCAB, 6
    theta = torch.randn(streams, rows, width, dtype=torch.float64)
    flush, anchored, gain = (torch.rand(rows, width, dtype=torch.float64) for _ in range(3))
    s_decay, s_step = torch.rand(streams, dtype=torch.float64) + 0.5, torch.rand(streams, dtype=torch.float64) + 0.5
    scaled = s_decay.view(-1, 1, 1), s_step.view(-1, 1, 1)
    x = torch.randint(0, rows, (5, streams))
    x[4] = x[1]
    grad = TableGradient(torch.randn(5, streams, rows, dtype=torch.float64), torch.randn(5, streams, width,
                         dtype=torch.float64), x, torch.randn(5, streams, width, dtype=torch.float64))
    expected = (1 - flush) * theta + anchored - gain * grad.dense()  # Krause's step
    for block in (1, 4, 7, rows, 100):
        step = FactoredStep(block_rows=block)
        torch.testing.assert_close(step(theta, flush, anchored, gain, grad), expected)
    # scaled per stream (the cheap learned rule)
    torch.testing.assert_close(
        FactoredStep(block_rows=7)(theta, flush, anchored, gain, grad, s_decay, s_step),
        krause_step(theta, anchored, flush, gain, grad.dense(), *scaled))
    # from a broadcast view of θ0 (a stream's first segment), into a tensor of its own
    view = theta[0].unsqueeze(0).expand(streams, rows, width)
    torch.testing.assert_close(FactoredStep(block_rows=5)(view, flush, anchored, gain, grad),
                               (1 - flush) * view + anchored - gain * grad.dense())
    # its norm, from the factors
    torch.testing.assert_close(grad.norms(), torch.linalg.vector_norm(grad.dense().flatten(1), dim=1))


def _rule_pair(kind, names, stats):
    """The rule, and the same rule on the reference path in which autograd forms the table's whole gradient."""
    kwargs = dict(eta=0.05, lam=0.02, eps=1e-3, **DIRECTIONS_OFF)
    base = DynEvalRule if kind == "dyneval" else ContextRule
    dense = type("Dense" + base.__name__, (base,), {"takes_factored_gradients": False})
    rules = base(names, stats, **kwargs).double(), dense(names, stats, **kwargs).double()
    if kind == "cheap":  # a learned rule away from its dyneval start: scales differ per tensor and stream
        for rule in rules:
            with torch.no_grad():
                rule.weight.copy_(0.3 * torch.randn(rule.weight.shape, generator=torch.Generator().manual_seed(5)))
                rule.bias.fill_(0.1)
    return rules


@pytest.mark.parametrize("kind", ["dyneval", "cheap"])
def test_reading_with_the_factored_gradient_equals_the_dense_path(kind):
    """Every parameter adapting, three streams of unequal length (padded segments), several segments: the
    scores and the final weights agree with the path in which autograd forms the table's whole gradient."""
    model = tiny_model(torch.float64).eval()
    names = select_dynamic(model, ["*"])
    stats = random_stats(model, names)
    ids = torch.randint(0, VOCAB, (61,), generator=torch.Generator().manual_seed(3))
    fast_rule, dense_rule = _rule_pair(kind, names, stats)
    assert fast_rule.takes_factored_gradients and not dense_rule.takes_factored_gradients
    got = read_stream(model, ids, 0, 5, rule=fast_rule, names=names, starts=[0, 17, 40])
    want = read_stream(model, ids, 0, 5, rule=dense_rule, names=names, starts=[0, 17, 40])
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    static = read_stream(model, ids, 0, 5)
    assert not torch.allclose(got, static)  # the table did adapt

    theta0 = static_weights(model, names)
    states = [fresh_state(model, theta0, 2, rule.init_learner_state({n: t.unsqueeze(0) for n, t in theta0.items()}))
              for rule in (fast_rule, dense_rule)]
    x, y = _segment(streams=2, seed=4)
    for _ in range(2):
        (_, _, states[0], _), (_, _, states[1], _) = (
            adapt_segment(model, rule, s, theta0, x, y) for rule, s in zip((fast_rule, dense_rule), states))
    for n in names:
        torch.testing.assert_close(states[0].fast[n], states[1].fast[n], rtol=1e-10, atol=1e-12, msg=n)


@pytest.mark.parametrize("kind", ["dyneval", "cheap"])
def test_the_factored_gradient_in_training_mode_with_long_padded_segments(kind):
    """ES reads its windows without a graph in training mode (dropout, embedding dropout, DropConnect), so the
    factored path serves them too; segments of more than the skinny decoder's 8 rows take the einsum decoder,
    and a stream whose segment is cut short is padded."""
    torch.manual_seed(0)
    model = build_model(ModelConfig(emb_size=6, hidden_size=8, num_layers=2, dropout=0.1, dropouth=0.1, dropouti=0.1,
                                    dropoute=0.1, wdrop=0.1), VOCAB)
    model = model.double().train()
    names = select_dynamic(model, ["*"])
    fast_rule, dense_rule = _rule_pair(kind, names, random_stats(model, names))
    theta0 = static_weights(model, names)
    g = torch.Generator().manual_seed(7)
    x, y = torch.randint(0, VOCAB, (11, 3), generator=g), torch.randint(0, VOCAB, (11, 3), generator=g)
    x[5] = x[0]
    mask = torch.ones(11, 3, dtype=torch.bool)
    mask[8:, 1] = False
    states = [fresh_state(model, theta0, 3, rule.init_learner_state({n: t.unsqueeze(0) for n, t in theta0.items()}))
              for rule in (fast_rule, dense_rule)]
    for step in range(2):
        outs = []
        for rule, state in zip((fast_rule, dense_rule), states):
            torch.manual_seed(100 + step)  # the same dropout masks on both paths
            outs.append(adapt_segment(model, rule, state, theta0, x, y, mask=mask))
        torch.testing.assert_close(outs[0][1], outs[1][1], rtol=1e-10, atol=1e-12)
        states = [out[2] for out in outs]
        for n in names:
            torch.testing.assert_close(states[0].fast[n], states[1].fast[n], rtol=1e-10, atol=1e-12, msg=n)
    torch.manual_seed(999)  # other masks: dropout is on
    other = adapt_segment(model, fast_rule, states[0], theta0, x, y, mask=mask)
    torch.manual_seed(100)
    same = adapt_segment(model, fast_rule, states[0], theta0, x, y, mask=mask)
    assert not torch.allclose(other[1], same[1])


def test_the_step_may_write_only_into_weights_the_reading_state_owns():
    """A fresh state's fast weights are views of θ0: the step may never write into them. The weights an update (or a
    reset) made belong to the state, and a reading loop that gives them up (`reuse_weights`) lets the next step
    write into them; without `reuse_weights` nothing is written into."""
    model = tiny_model(torch.float64).eval()
    names = select_dynamic(model, ["*"])
    offered = []

    class Recording(DynEvalRule):
        def forward(self, fast, grads, theta0, seg_loss, learner_state):
            offered.append({n for n, g in grads.items() if isinstance(g, FactoredGradient) and g.overwrite})
            return super().forward(fast, grads, theta0, seg_loss, learner_state)

    rule = Recording(names, random_stats(model, names), eta=0.05, lam=0.02, eps=1e-3, **DIRECTIONS_OFF).double()
    theta0 = static_weights(model, names)
    x, y = _segment(streams=1)
    state = fresh_state(model, theta0, 1, {})
    assert state.owned == frozenset()
    _, _, state, _ = adapt_segment(model, rule, state, theta0, x, y, reuse_weights=True)
    assert offered[-1] == set() and state.owned == set(names)
    adapt_segment(model, rule, state, theta0, x, y)
    assert offered[-1] == set()
    _, _, state, _ = adapt_segment(model, rule, state, theta0, x, y, reuse_weights=True)
    matrices = {n for n in names if theta0[n].dim() == 2}
    assert offered[-1] == matrices
    fresh = fresh_state(model, theta0, 1, {})
    assert fresh.reset(torch.tensor([True]), theta0).owned == set(names)  # a reset makes new tensors
    assert fresh.reset(torch.tensor([False]), theta0).owned == frozenset()


def _random_step_inputs(streams=2, rows=VOCAB, width=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    theta = torch.randn(streams, rows, width, generator=g)
    flush, anchored, gain = (torch.rand(rows, width, generator=g) for _ in range(3))
    x = torch.randint(0, rows, (5, streams), generator=g)
    grad = TableGradient(torch.randn(5, streams, rows, generator=g), torch.randn(5, streams, width, generator=g),
                         x, torch.randn(5, streams, width, generator=g))
    return theta, flush, anchored, gain, grad


@pytest.mark.slow
def test_the_compiled_step_is_the_blockwise_step():
    """The kernel `torch.compile` makes of the formula (what a large table takes) agrees with the blocks,
    segment lengths changing as at the end of an article."""
    torch._dynamo.reset()
    graphs = counters["stats"]["unique_graphs"]
    kernel, blocked = FactoredStep(compile_min=0), FactoredStep(compile_min=10**9)
    for seed in range(2):
        theta, flush, anchored, gain, grad = _random_step_inputs(seed=seed)
        s_step = torch.rand(2) + 0.5
        if seed:
            grad = TableGradient(grad.d[:, :, :2].permute(2, 0, 1), grad.u[:, :2].transpose(0, 1), grad.tokens[:2],
                                 grad.d_embedded[:2])
        compiled = kernel(theta, flush, anchored, gain, grad, s_step=s_step)
        assert not kernel.failed, "torch.compile failed here: the blocks were used"
        blocks = blocked(theta, flush, anchored, gain, grad, s_step=s_step)
        torch.testing.assert_close(compiled, blocks)
        # where the caller gives θ up, the compiled kernel writes θ' into θ's memory
        own = theta.clone()
        grad.overwrite = True
        into = kernel(own, flush, anchored, gain, grad, s_step=s_step)
        assert into.data_ptr() == own.data_ptr()
        torch.testing.assert_close(into, blocks)
        # a broadcast view of θ0 (a stream's first segment) is never written into
        view = theta[:1].expand_as(theta)
        before = view.clone()
        fresh = kernel(view, flush, anchored, gain, grad, s_step=s_step)
        assert torch.equal(view, before) and fresh.data_ptr() != view.data_ptr()
        assert not kernel.failed
        torch.testing.assert_close(fresh, blocked(view, flush, anchored, gain, grad, s_step=s_step))
    # dynamo compiled graphs rather than quietly running the blocks eagerly
    assert counters["stats"]["unique_graphs"] > graphs


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["dyneval", "cheap"])
def test_reading_through_the_compiled_kernel_leaves_the_static_weights_alone(kind):
    """With the compiled kernel writing each new table into the old one's memory (a tiny table made to take
    it), reading equals the dense path, and the model's own table (θ0) is bit-identical afterwards."""
    model = tiny_model(torch.float64).eval()
    names = select_dynamic(model, ["*"])
    before = {n: t.detach().clone() for n, t in model.named_parameters()}
    fast_rule, dense_rule = _rule_pair(kind, names, random_stats(model, names))
    fast_rule.factored_step = FactoredStep(compile_min=0)  # the rule's own kernel, made to take every matrix
    ids = torch.randint(0, VOCAB, (43,), generator=torch.Generator().manual_seed(6))
    # one stream, two, and resets (articles read independently: the table goes back to θ0 mid-stream)
    for starts, restarts in (([0], None), ([0, 20], None), ([0, 20], [9, 20, 31])):
        got = read_stream(model, ids, 0, 5, rule=fast_rule, names=names, starts=starts, restarts=restarts)
        assert not fast_rule.factored_step.failed
        want = read_stream(model, ids, 0, 5, rule=dense_rule, names=names, starts=starts, restarts=restarts)
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    for n, t in model.named_parameters():
        assert torch.equal(t, before[n]), n


def test_a_failed_compile_falls_back_to_the_blocks(monkeypatch):
    def no_compiler(fn, **options):
        def fails(*args):
            raise RuntimeError("no C++ compiler")
        return fails

    monkeypatch.setattr(factored_gradient.torch, "compile", no_compiler)
    theta, flush, anchored, gain, grad = _random_step_inputs()
    warned = []
    monkeypatch.setattr(factored_gradient.log, "warning", lambda msg, *args: warned.append(msg % args))
    step = FactoredStep(compile_min=0)
    got = step(theta, flush, anchored, gain, grad)
    assert any("compiled weight update is unavailable (RuntimeError: no C++ compiler)" in w for w in warned)
    assert step.failed and not FactoredStep(compile_min=0).failed  # the state of the step that failed only
    torch.testing.assert_close(got, (1 - flush) * theta + anchored - gain * grad.dense())
