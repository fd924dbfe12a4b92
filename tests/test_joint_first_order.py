"""`meta.estimator=first_order`: θ0's first-order joint gradient from the reading loop's own segment gradients
(`train/first_order_estimator.py`) equals truncated meta-BPTT's first-order gradient through the chain of updates."""
import pytest
import torch
from omegaconf import OmegaConf

from dynamic_helpers import RandomStreams, tiny_meta_learning, tiny_model
from dynlm.config import ConfigValueError, MetaConfig
from dynlm.kernels.factored_gradient import FactoredGradient, TableGradient
from dynlm.train.meta_trainer import check_estimator, fresh_window_state
from dynlm.train.window_reading import read_window

K, L, B = 3, 4, 2


def gradients(estimator: str, dynamic, ewc: float, windows: int):
    """θ0's gradient over segments `(windows − 1)·K .. windows·K − 1`, read from a fresh state, rule=dyneval with a
    step that moves the weights, float64, dropout on (every reading draws the same masks).

    `first_order`: the estimator's windows of K segments. `bptt`: meta-BPTT (first order) over windows of ONE
    segment, its gradients averaged over the K windows: the same quantity, for the first-order estimator truncates
    the hidden state's gradient at every segment boundary, as each segment's update does."""
    torch.manual_seed(0)
    model = tiny_model(torch.float64, dropout=True)
    with torch.no_grad():  # away from the anchor, so that the EWC penalty has a gradient
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    window = K if estimator == "first_order" else 1
    ml = tiny_meta_learning(model=model, dynamic=dynamic, rule="dyneval", eta=0.05, lam=0.02, window=window,
                            seg_len=L, batch_size=B, train_static=True, estimator=estimator, ewc=ewc)
    ml.anchor = {n: t - 0.01 for n, t in ml.anchor.items()}
    streams = RandomStreams(seg_len=L, batch=B)
    state, _ = fresh_window_state(ml, B)
    torch.manual_seed(7)
    total = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
    losses = []
    reads = windows * K // window
    for w in range(reads):
        ml.optimizer.zero_grad(set_to_none=True)
        read = lambda with_static, w=w, state=state: read_window(ml, streams, w * window, state, None,  # noqa: E731
                                                                  ml.estimator.reading)
        read_now, _ = ml.estimator.estimate(ml, read, seed=w)
        state = read_now.state.detach()
        if w >= reads - K // window:  # the last K segments
            losses.append(float(read_now.per_stream.detach().mean()))
            for n, p in model.named_parameters():
                total[n] += p.grad
    return sum(losses) / len(losses), {n: g / len(losses) for n, g in total.items()}


@pytest.mark.parametrize("dynamic,ewc,windows", [(["*"], 0.0, 1), (["*"], 0.5, 2), (["layers.*"], 0.0, 2)])
def test_first_order_estimator_equals_meta_bptt_first_order_per_segment(dynamic, ewc, windows):
    """Every parameter adapting (the tied table's factored gradient, a stream reset inside the second window) or
    only the LSTM (the table and decoder bias shared, their gradient taken directly); from a fresh state and after a
    truncation; with and without the EWC penalty."""
    loss, fast = gradients("first_order", dynamic, ewc, windows)
    expected_loss, slow = gradients("bptt", dynamic, ewc, windows)
    assert abs(loss - expected_loss) <= 1e-12 * abs(expected_loss)
    for n, g in slow.items():
        assert float(g.abs().max()) > 0, n
        torch.testing.assert_close(fast[n], g, rtol=1e-9, atol=1e-14, msg=n)


def test_stream_sums_of_factored_gradients_are_the_dense_sums():
    g = torch.Generator().manual_seed(0)
    bb, rows, cols, length = 3, 7, 5, 4
    matrix = FactoredGradient(torch.randn(bb, rows, length, generator=g), torch.randn(bb, length, cols, generator=g))
    torch.testing.assert_close(matrix.stream_sum(), matrix.dense().sum(0))
    tokens = torch.tensor([[1, 2, 1], [1, 6, 0], [3, 2, 1], [1, 1, 1]])  # [L, B]: rows read more than once
    table = TableGradient(torch.randn(length, bb, rows, generator=g), torch.randn(length, bb, cols, generator=g),
                          tokens, torch.randn(length, bb, cols, generator=g))
    torch.testing.assert_close(table.stream_sum(), table.dense().sum(0))


def meta(**over):
    return OmegaConf.merge(OmegaConf.structured(MetaConfig), over)


@pytest.mark.parametrize("over,rule,learned,says", [
    ({"estimator": "first_order"}, "cheap", True, "meta.train_static=false"),
    ({"estimator": "first_order", "train_static": True, "second_order": True}, "dyneval", False,
     "meta.second_order=true"),
    ({"estimator": "first_order", "train_static": True}, "cheap", True, "rule=cheap has parameters to learn"),
    ({"train_static": True, "learner_lr": 0.01}, "dyneval", False, "meta.learner_lr=0.01 has no effect"),
    ({}, "dyneval", False, "rule=dyneval has nothing to train"),
])
def test_estimator_choices_that_cannot_train_what_is_asked_are_refused(over, rule, learned, says):
    with pytest.raises(ConfigValueError, match=says.replace(".", r"\.")):
        check_estimator(meta(**over), rule, learned)


def test_first_order_with_a_fixed_rule_is_accepted():
    check_estimator(meta(estimator="first_order", train_static=True), "dyneval", False)
    check_estimator(meta(train_static=True, second_order=True), "dyneval", False)  # bptt: θ0 through dyneval


@pytest.mark.parametrize("estimator", ["first_order", "es"])
def test_reading_without_a_graph_keeps_no_segments_weights_alive(estimator):
    """Reading in train mode (dropout on) on the factored path, each segment's per-stream weights are freed once the
    next segment is read: a node of the LSTM recurrence holding the caller's `WeightFactors` kept every segment's
    graph alive (a cycle the garbage collector cannot see), and a long run ran out of memory."""
    import gc

    model = tiny_model(torch.float32, dropout=True)
    rule = "dyneval" if estimator == "first_order" else "cheap"
    ml = tiny_meta_learning(model=model, dynamic=["*"], rule=rule, window=6, seg_len=L, batch_size=B,
                            train_static=estimator == "first_order", estimator=estimator)
    streams = RandomStreams(seg_len=L, batch=B)
    table = model.embedding.weight

    def per_stream_tables():
        gc.collect()
        return [o for o in gc.get_objects()
                if torch.is_tensor(o) and o.dim() == 3 and tuple(o.shape[1:]) == tuple(table.shape)]

    before = per_stream_tables()  # left by earlier tests in this process (e.g. fake tensors of a compile)
    known = {id(o) for o in before}  # `before` holds them, so their ids are not reused
    state, _ = fresh_window_state(ml, B)
    window, _ = ml.estimator.estimate(ml, lambda with_static: read_window(ml, streams, 1, state, None,
                                                                           ml.estimator.reading), seed=0)
    alive = [o for o in per_stream_tables() if id(o) not in known]
    assert len(alive) <= 2, len(alive)  # the window's last weights (and the state it carries on)
