"""The fused per-stream LSTM (dynlm/kernels/per_stream_lstm.py) equals the reference layer (dynlm/maths/lstm.py)
and nn.LSTM."""
import functools

import pytest
import torch

from dynlm.kernels.per_stream_lstm import PerStreamLSTM, WeightFactors, machine_chunk_bytes, per_stream_lstm_layer
from dynlm.maths.lstm import lstm_layer_reference
from dynlm.model import lstm_layer

T, B, I, H = 5, 3, 4, 6
SHAPES = [(4 * H, I), (4 * H, H), (4 * H,), (4 * H,)]  # w_ih, w_hh, b_ih, b_hh


def _weights(per_stream, dtype=torch.float64, seed=0):
    """`per_stream`: four flags (w_ih, w_hh, b_ih, b_hh) — shared `[...]` or per stream `[B, ...]`."""
    g = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(B, *s, generator=g, dtype=dtype) if p else torch.randn(*s, generator=g, dtype=dtype))
        .mul_(0.5).requires_grad_()
        for s, p in zip(SHAPES, per_stream)
    ]


def _inputs(dtype=torch.float64, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(*s, generator=g, dtype=dtype).requires_grad_() for s in ((T, B, I), (B, H), (B, H))]


def _flat(fn):
    def run(x, h0, c0, *w):
        out, (h, c) = fn(x, (h0, c0), *w)
        return out, h, c
    return run


@pytest.fixture(params=[None, 1], ids=["one-chunk", "stream-chunks"])
def fused(request):
    """The fused layer with all streams at once and with the cache-blocked path (one stream per group)."""
    return functools.partial(per_stream_lstm_layer, chunk_bytes=request.param or 1 << 62)


def test_the_default_group_size_is_a_quarter_of_the_last_level_cache():
    assert machine_chunk_bytes() >= 1 << 16  # read from sysfs (32 MiB when it cannot be read), at the first call


MIXES = [(1, 1, 1, 1), (0, 1, 0, 0), (1, 0, 0, 0), (0, 0, 1, 1), (1, 1, 0, 0), (0, 0, 0, 0)]


@pytest.mark.parametrize("per", MIXES, ids=lambda p: "".join(map(str, p)))
def test_outputs_and_all_gradients_equal_the_autograd_loop(per, fused):
    x, h0, c0 = _inputs()
    w = _weights(per)
    ref = _flat(lstm_layer_reference)(x, h0, c0, *w)
    new = _flat(fused)(x, h0, c0, *w)
    for a, b in zip(new, ref):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    g = torch.Generator().manual_seed(2)
    gouts = [torch.randn(o.shape, generator=g, dtype=o.dtype) for o in ref]
    inputs = [x, h0, c0, *w]
    g_ref = torch.autograd.grad(ref, inputs, gouts)
    g_new = torch.autograd.grad(new, inputs, gouts)
    for name, a, b in zip(["x", "h0", "c0", "w_ih", "w_hh", "b_ih", "b_hh"], g_new, g_ref):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12, msg=name)


@pytest.mark.parametrize("per", [(1, 1, 1, 1), (0, 1, 0, 0), (1, 0, 1, 0)], ids=lambda p: "".join(map(str, p)))
def test_gradcheck(per, fused):
    x, h0, c0 = [t.detach()[:3].requires_grad_() if t.dim() == 3 else t for t in _inputs()]
    w = _weights(per)
    assert torch.autograd.gradcheck(_flat(fused), (x, h0, c0, *w))


def test_gradgradcheck():
    """Second derivatives through the fused layer (meta.second_order=true differentiates its backward)."""
    x, h0, c0 = [t.detach()[:3].requires_grad_() if t.dim() == 3 else t for t in _inputs()]
    w = _weights((1, 1, 1, 0))
    assert torch.autograd.gradgradcheck(_flat(per_stream_lstm_layer), (x, h0, c0, *w))


def test_per_stream_equals_nn_lstm_and_float32_tolerance():
    torch.manual_seed(0)
    ref = torch.nn.LSTM(I, H)
    shared = (ref.weight_ih_l0, ref.weight_hh_l0, ref.bias_ih_l0, ref.bias_hh_l0)
    x, h0, c0 = torch.randn(T, B, I), torch.randn(B, H), torch.randn(B, H)
    out_ref, (h_ref, c_ref) = ref(x, (h0[None], c0[None]))
    per = [t.detach().unsqueeze(0).repeat(B, *([1] * t.dim())).requires_grad_() for t in shared]
    out, (h, c) = lstm_layer(x, (h0, c0), *per)  # dispatches to the fused path
    assert out.grad_fn is not None and "PerStreamLSTM" in type(out.grad_fn).__name__
    torch.testing.assert_close(out, out_ref)
    torch.testing.assert_close(h, h_ref[0])
    torch.testing.assert_close(c, c_ref[0])
    gout = torch.randn_like(out)
    g_ref = torch.autograd.grad(out_ref, shared, gout)
    g_per = torch.autograd.grad(out, per, gout)
    for a, b in zip(g_per, g_ref):  # the per-stream gradients sum to the shared one
        torch.testing.assert_close(a.sum(0), b, rtol=1e-4, atol=1e-5)


def test_expanded_weights_read_once_but_get_per_stream_gradients(fused):
    """Fresh fast weights are θ0 expanded over streams (stride 0): the gradient is still one per stream."""
    x, h0, c0 = _inputs()
    shared = _weights((0, 0, 0, 0))
    expanded = [t.detach().unsqueeze(0).expand(B, *t.shape).requires_grad_() for t in shared]
    dense = [t.detach().clone().requires_grad_() for t in expanded]
    a = _flat(fused)(x, h0, c0, *expanded)
    b = _flat(lstm_layer_reference)(x, h0, c0, *dense)
    for u, v in zip(a, b):
        torch.testing.assert_close(u, v, rtol=1e-12, atol=1e-12)
    ga = torch.autograd.grad(a[0].sum(), expanded)
    gb = torch.autograd.grad(b[0].sum(), dense)
    for u, v in zip(ga, gb):
        assert u.shape == v.shape
        torch.testing.assert_close(u, v, rtol=1e-10, atol=1e-12)


def test_single_stream_and_float32():
    x, h0, c0 = [t.detach().float()[:, :1] if t.dim() == 3 else t.detach().float()[:1] for t in _inputs()]
    w = [t.detach().float()[:1].requires_grad_() for t in _weights((1, 1, 1, 1))]
    a = _flat(per_stream_lstm_layer)(x, h0, c0, *w)
    b = _flat(lstm_layer_reference)(x, h0, c0, *w)
    for u, v in zip(a, b):
        torch.testing.assert_close(u, v)
    for u, v in zip(torch.autograd.grad(a[0].sum(), w), torch.autograd.grad(b[0].sum(), w)):
        torch.testing.assert_close(u, v, rtol=1e-4, atol=1e-5)


def test_weight_gradient_is_one_batched_matmul_not_a_per_step_accumulation():
    """The backward's large products are per segment: the step loop only does the [B,1,4H]@[B,4H,H] products."""
    x, h0, c0 = _inputs(dtype=torch.float32)
    w = [t.detach().float().requires_grad_() for t in _weights((1, 1, 1, 1))]
    out, (h, c) = per_stream_lstm_layer(x, (h0, c0), *w)
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        torch.autograd.backward([out], [torch.ones_like(out)])
    shapes = [e.input_shapes for e in prof.events() if e.name == "aten::bmm"]
    weight_grads = [s for s in shapes if s and s[0] == [B, 4 * H, T]]  # [B, 4H, T] @ [B, T, *]
    assert len(weight_grads) == 2, shapes  # dW_ih and dW_hh, once each
    assert not any(e.name == "aten::add_" and e.input_shapes and e.input_shapes[0] == [B, 4 * H, H]
                   for e in prof.events()), "per-step accumulation of a weight gradient"


def test_backward_can_run_twice_with_retain_graph():
    x, h0, c0 = _inputs()
    w = _weights((1, 1, 1, 1))
    out, (h, c) = per_stream_lstm_layer(x, (h0, c0), *w)
    loss = out.square().sum() + h.sum() + c.sum()
    g1 = torch.autograd.grad(loss, w, retain_graph=True)
    g2 = torch.autograd.grad(loss, w)
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b)


def test_output_is_not_silently_writable():
    x, h0, c0 = _inputs()
    w = _weights((1, 1, 1, 1))
    out = PerStreamLSTM.apply(x, h0, c0, *w, None, None)[0]
    with pytest.raises(RuntimeError):
        out.mul_(2.0)  # a view of the saved outputs: autograd refuses to let it be modified in place


def _read_twice(x, w_ih, w_hh, b_ih, b_hh, factors=None):
    """Two layers that share one set of per-stream weights (I = H): each weight is read by two recurrences."""
    zero = torch.zeros(B, H, dtype=x.dtype)
    out, state = per_stream_lstm_layer(x, (zero, zero), w_ih, w_hh, b_ih, b_hh, factors)
    out, _ = per_stream_lstm_layer(out, state, w_ih, w_hh, b_ih, b_hh, factors)
    return (out ** 2).sum()


def test_factored_weight_gradients_of_a_weight_read_twice_add_up_to_autograds():
    """Given a `WeightFactors`, the backward hands the gradients of the weights it names over to it as factors
    (one pair per read, concatenated over the steps) and autograd gets none for them; the factors' product is
    autograd's gradient, and the biases' gradients are unchanged. Without it, the same layers form them."""
    g = torch.Generator().manual_seed(3)
    weights = [torch.randn(B, *s, generator=g, dtype=torch.float64).mul_(0.5).requires_grad_()
               for s in [(4 * H, H), (4 * H, H), (4 * H,), (4 * H,)]]
    x = torch.randn(T, B, H, generator=g, dtype=torch.float64)
    expected = torch.autograd.grad(_read_twice(x, *weights), weights)
    found = WeightFactors({"ih": weights[0], "hh": weights[1]})
    loss = _read_twice(x, *weights, factors=found)
    assert found.seen == ["ih", "hh"]
    got = torch.autograd.grad(loss, weights, allow_unused=True)
    assert got[0] is None and got[1] is None
    for name, want in zip(("ih", "hh"), expected):
        d, u = found.factors[name]
        assert d.shape == (B, 4 * H, 2 * T) and u.shape == (B, 2 * T, H)
        torch.testing.assert_close(torch.bmm(d, u), want)
    torch.testing.assert_close(got[2], expected[2])
    torch.testing.assert_close(got[3], expected[3])


def test_factored_weight_gradients_refuse_a_differentiable_backward():
    weights = _weights((True, True, True, True))
    x, h0, c0 = _inputs()
    out, _ = per_stream_lstm_layer(x, (h0, c0), *weights, WeightFactors({"ih": weights[0]}))
    with pytest.raises(RuntimeError, match="first-order only"):
        torch.autograd.grad(out.sum(), [weights[2]], create_graph=True)
