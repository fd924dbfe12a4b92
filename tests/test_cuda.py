"""On a GPU, the code paths that run there compute what they compute on the CPU (float64, tight tolerances): the
per-stream LSTM layer and its backward pass, static and dynamic-evaluation reading, and the meta-gradient of a
learned rule. Skipped without CUDA; scripts/device_check.sh runs them on a GPU machine."""
import pytest
import torch

from dynamic_helpers import VOCAB, perturb, random_stats, read, setup, tiny_model, tokens
from dynlm.dynamic.dyneval import DIRECTIONS_OFF, DynEvalRule
from dynlm.dynamic.reading import read_stream
from dynlm.kernels.per_stream_lstm import per_stream_lstm_layer

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
TOL = dict(rtol=1e-9, atol=1e-10)
CUDA = torch.device("cuda")


def _on(device, tensors):
    return [t.detach().to(device).requires_grad_(t.requires_grad) for t in tensors]


def test_per_stream_lstm_layer_and_its_gradients_match_the_cpu():
    g = torch.Generator().manual_seed(0)
    t, b, i, h = 7, 3, 5, 4
    shapes = [(t, b, i), (b, h), (b, h), (b, 4 * h, i), (b, 4 * h, h), (b, 4 * h), (b, 4 * h)]
    cpu = [torch.randn(s, generator=g, dtype=torch.float64, requires_grad=True) for s in shapes]
    results = []
    for tensors in (cpu, _on(CUDA, cpu)):
        x, h0, c0, w_ih, w_hh, b_ih, b_hh = tensors
        out, (hT, cT) = per_stream_lstm_layer(x, (h0, c0), w_ih, w_hh, b_ih, b_hh)
        (out.square().sum() + hT.sum() + cT.square().sum()).backward()
        results.append([out, hT, cT] + [p.grad for p in tensors])
    for a, c in zip(*results):
        torch.testing.assert_close(c.cpu(), a, **TOL)


@pytest.mark.parametrize("adaptive", [False, True])
def test_static_and_dyneval_reading_match_the_cpu(adaptive):
    model = tiny_model(torch.float64)
    names = [n for n, _ in model.named_parameters() if n.startswith("layers.")]
    stats = random_stats(model, names)
    ids = torch.randint(1, VOCAB, (60,), generator=torch.Generator().manual_seed(1))
    losses = []
    for device in ("cpu", CUDA):
        m = tiny_model(torch.float64).to(device).eval()
        rule = (DynEvalRule(names, stats, eta=1e-2, lam=1e-3, eps=1e-5, **DIRECTIONS_OFF).to(device)
                if adaptive else None)
        losses.append(read_stream(m, ids, 0, 5, rule=rule, names=names if adaptive else (), restarts=[30]))
    torch.testing.assert_close(losses[1].cpu(), losses[0], **TOL)


def test_meta_gradients_of_the_learned_rule_match_the_cpu():
    segments = tokens(3, 4, 2)
    grads = []
    for device in ("cpu", CUDA):
        model, names, _, learner = setup(torch.float64)
        perturb(learner)
        model, learner = model.to(device), learner.to(device)
        losses, _ = read(model, learner, names, [s.to(device) for s in segments], keep_graph=True)
        losses.mean().backward()
        grads.append({n: p.grad.cpu() for n, p in learner.named_parameters() if p.grad is not None})
    assert grads[0] and grads[0].keys() == grads[1].keys()
    for n in grads[0]:
        torch.testing.assert_close(grads[1][n], grads[0][n], **TOL, msg=n)
