"""The AWD-LSTM and its functional LSTM."""
import pytest
import torch
from torch.func import functional_call

from dynlm.config import ModelConfig
from dynlm.maths.lstm import lstm_layer_reference
from dynlm.model import AWDLSTM, build_model, lstm_layer, token_nll
from dynlm.model.dropout import drop_connect, locked_dropout


def small_lm(vocab_size: int, **settings) -> AWDLSTM:
    """An AWD-LSTM of 8/12 units in 2 layers, its other settings the config's defaults."""
    return build_model(ModelConfig(emb_size=8, hidden_size=12, num_layers=2, **settings), vocab_size)

def _nn_lstm(i=5, h=6, seed=0):
    torch.manual_seed(seed)
    ref = torch.nn.LSTM(i, h)
    w = (ref.weight_ih_l0, ref.weight_hh_l0, ref.bias_ih_l0, ref.bias_hh_l0)
    return ref, w


@pytest.mark.parametrize("impl", [lstm_layer, lstm_layer_reference])
def test_functional_lstm_equals_nn_lstm(impl):
    ref, w = _nn_lstm()
    x, h, c = torch.randn(9, 3, 5), torch.randn(3, 6), torch.randn(3, 6)
    out_ref, (h_ref, c_ref) = ref(x, (h[None], c[None]))
    out, (h1, c1) = impl(x, (h, c), *w)
    torch.testing.assert_close(out, out_ref)
    torch.testing.assert_close(h1, h_ref[0])
    torch.testing.assert_close(c1, c_ref[0])
    # and the gradients w.r.t. the weights agree
    g_ref = torch.autograd.grad(out_ref.square().sum(), w)
    g = torch.autograd.grad(impl(x, (h, c), *w)[0].square().sum(), w)
    for a, b in zip(g, g_ref):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_per_stream_weights_equal_shared_when_identical_and_differ_when_not():
    _, w = _nn_lstm()
    b = 4
    x, h, c = torch.randn(7, b, 5), torch.zeros(b, 6), torch.zeros(b, 6)
    shared, _ = lstm_layer(x, (h, c), *w)
    per = [t.detach().unsqueeze(0).repeat(b, *([1] * t.dim())) for t in w]
    out, _ = lstm_layer(x, (h, c), *per)
    torch.testing.assert_close(out, shared)
    per[1][2] += 0.5  # change stream 2's recurrent matrix only
    out2, _ = lstm_layer(x, (h, c), *per)
    torch.testing.assert_close(out2[:, [0, 1, 3]], shared[:, [0, 1, 3]])
    assert not torch.allclose(out2[:, 2], shared[:, 2])


def test_tied_embedding_is_one_parameter_and_padding_idx_is_not_minus_one():
    m = small_lm(50)
    names = [n for n, _ in m.named_parameters()]
    assert names.count("embedding.weight") == 1
    assert not any("decoder.weight" in n for n in names)
    assert m.embedding.padding_idx is None
    # the decoder reads the embedding: a change to it moves the logits even for an unseen input token
    m.eval()
    x = torch.zeros(3, 1, dtype=torch.long)
    base = m(x, m.init_state(1)).logits
    w = dict(m.named_parameters())["embedding.weight"].detach().clone()
    w[7] += 1.0
    moved = functional_call(m, {"embedding.weight": w}, (x, m.init_state(1))).logits
    assert not torch.allclose(moved[..., 7], base[..., 7])
    torch.testing.assert_close(moved[..., 3], base[..., 3])


def test_per_stream_embedding_changes_both_ends():
    torch.manual_seed(0)
    m = small_lm(30).eval()
    x = torch.tensor([[5, 5], [1, 1], [2, 2]])
    table = m.embedding.weight.detach()
    fast = table.unsqueeze(0).repeat(2, 1, 1)
    base = functional_call(m, {"embedding.weight": fast}, (x, m.init_state(2))).logits
    torch.testing.assert_close(base[:, 0], base[:, 1])
    fast2 = fast.clone()
    fast2[1, 5] += 0.5  # stream 1's row for token 5: its input at t=0 and its output logit for 5
    out = functional_call(m, {"embedding.weight": fast2}, (x, m.init_state(2))).logits
    torch.testing.assert_close(out[:, 0], base[:, 0])
    assert not torch.allclose(out[1:, 1, 0], base[1:, 1, 0])  # input end: later hidden states moved
    assert not torch.allclose(out[0, 1, 5] - out[0, 1, 0], base[0, 1, 5] - base[0, 1, 0])  # output end


def test_dropout_is_off_in_eval_and_locked_over_time():
    x = torch.ones(6, 3, 4)
    torch.manual_seed(0)
    y = locked_dropout(x, 0.5, True)
    assert torch.equal(y[0], y[5])  # the same mask at every time step
    assert torch.equal(locked_dropout(x, 0.5, False), x)
    w = torch.ones(2, 8, 4)
    d = drop_connect(w, 0.5, True)
    assert torch.equal(d[0], d[1]) and (d == 0).any()


def test_static_weights_untouched_by_forward_and_no_data_writes():
    """Weight dropout and embedding dropout must draw masked copies: the original AWD-LSTM's WeightDrop wrote
    the dropped weights into the parameters. Any in-place write bumps a tensor's version counter."""
    m = small_lm(40, wdrop=0.5, dropoute=0.2).train()
    before = {n: (p.detach().clone(), p._version) for n, p in m.named_parameters()}
    out = m(torch.randint(0, 40, (5, 2)), m.init_state(2))
    token_nll(out.logits, torch.randint(0, 40, (5, 2))).mean().backward()
    for n, p in m.named_parameters():
        assert torch.equal(p, before[n][0]) and p._version == before[n][1], n
        assert p.grad is not None and bool(p.grad.abs().sum() > 0), n  # the backward reached every weight


@pytest.mark.parametrize("T, B, per_stream", [(5, 3, True), (12, 3, True), (5, 1, False), (2, 3, False)])
def test_decode_table_first_path_equals_plain_products_first_and_second_order(T, B, per_stream):
    # at most 8 rows per table take decode's table-first path (12 per stream take einsum); logits, ∂h, ∂W and a
    # Hessian-vector product must be those of the plain product, rows in (time, stream) order
    from dynlm.model.awd_lstm import SKINNY_ROWS, decode

    assert (T * (1 if per_stream else B) <= SKINNY_ROWS) == (T != 12)
    torch.manual_seed(0)
    V, E = 40, 6
    table = torch.randn(*((B,) if per_stream else ()), V, E, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(V, dtype=torch.float64)
    h = torch.randn(T, B, E, dtype=torch.float64, requires_grad=True)
    plain = lambda x, w: (torch.einsum("tbe,bve->tbv", x, w) if per_stream else x @ w.t()) + bias  # noqa: E731
    wrt = [h, table]

    def grads(f):
        logits = f(torch.tanh(h), table)
        return logits, torch.autograd.grad(logits.logsumexp(-1).pow(2).sum(), wrt, create_graph=True)

    (l_fast, g_fast), (l_plain, g_plain) = grads(lambda x, w: decode(x, w, bias)), grads(plain)
    torch.testing.assert_close(l_fast, l_plain)
    probes = [torch.randn_like(t) for t in wrt]
    for gf, gp in zip(g_fast, g_plain):
        torch.testing.assert_close(gf, gp)
    hv = lambda gs: torch.autograd.grad(sum((g * p).sum() for g, p in zip(gs, probes)), wrt)  # noqa: E731
    for a, b in zip(hv(g_fast), hv(g_plain)):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("T, B", [(5, 3), (2, 3)])
def test_decode_with_a_shared_table_and_a_per_stream_bias(T, B):
    # the adapted set [layers.*, decoder_bias] leaves the table shared and gives each stream its own bias [B, V]:
    # every path (T·B rows as one matrix, or table-first when few) adds each stream its own bias
    from dynlm.model.awd_lstm import decode

    torch.manual_seed(0)
    V, E = 40, 6
    table, bias = torch.randn(V, E, dtype=torch.float64), torch.randn(B, V, dtype=torch.float64)
    h = torch.randn(T, B, E, dtype=torch.float64)
    torch.testing.assert_close(decode(h, table, bias), h @ table.t() + bias.unsqueeze(0))


def test_per_stream_lookup_gradient_equals_plain_indexing_first_and_second_order():
    # embed() gives a per-stream table a sparse gradient (added in place to the tied decoder's dense one);
    # it must be the gradient of plain indexing, and stay differentiable under double backward
    from dynlm.model.awd_lstm import decode, embed

    torch.manual_seed(0)
    B, V, E, T = 3, 40, 6, 7
    table = torch.randn(B, V, E, requires_grad=True)
    bias = torch.randn(V)
    tokens = torch.randint(0, V, (T, B))
    tokens[3, 1] = tokens[0, 1]  # a repeated token: its rows accumulate

    def loss(lookup):
        x = lookup(tokens, table)
        return decode(torch.tanh(x), table, bias).logsumexp(-1).pow(2).sum()

    plain = lambda tok, w: w[torch.arange(B).unsqueeze(0), tok]  # noqa: E731
    g_plain, = torch.autograd.grad(loss(plain), table, create_graph=True)
    g_fast, = torch.autograd.grad(loss(embed), table, create_graph=True)
    assert g_fast.layout == torch.strided
    torch.testing.assert_close(g_fast, g_plain, rtol=1e-5, atol=1e-6)
    probe = torch.randn(B, V, E)
    hv_plain, = torch.autograd.grad((g_plain * probe).sum(), table)
    hv_fast, = torch.autograd.grad((g_fast * probe).sum(), table)
    torch.testing.assert_close(hv_fast, hv_plain, rtol=1e-4, atol=1e-5)
    g_first, = torch.autograd.grad(loss(embed), table)  # first order: the sparse path
    torch.testing.assert_close(g_first, g_plain.detach(), rtol=1e-5, atol=1e-6)
