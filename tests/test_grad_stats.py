"""Krause's gradient statistics: the mean over batches of the squared gradient of each batch's mean loss."""
import pytest
import torch

from dynamic_helpers import VOCAB, tiny_model
from dynlm.data import batchify
from dynlm.dynamic.fast_weights import select_dynamic
from dynlm.dynamic.grad_stats import GradStats, measure_grad_stats
from dynlm.model import token_nll


def test_statistics_are_krauses_batch_mean_gradients():
    model = tiny_model(torch.float64, dropout=True).train()  # measured in eval mode, the mode restored after
    names = select_dynamic(model, ["*"])
    ids = torch.randint(0, VOCAB, (203,), generator=torch.Generator().manual_seed(0))
    stats = measure_grad_stats(model, names, ids, streams=4, seg_len=6)
    assert model.training

    # by hand, as dynamiceval.py's gradstat(): batchify, read bptt tokens at a time, MS += g², MS / batches
    model.eval()
    data = batchify(ids, 4)  # [50, 4]: the 3 tail tokens are dropped; 8 batches of 6 rows, then i = 48 = rows - 2
    params = dict(model.named_parameters())
    sums = {n: torch.zeros_like(params[n]) for n in names}
    state, batches, i = model.init_state(4), 0, 0
    while i < data.shape[0] - 2:  # dynamiceval.py: `while i < train_data.size(0) - 1 - 1`
        x, y = data[i:i + 6], data[i + 1:i + 7][: min(6, data.shape[0] - 1 - i)]
        x = x[: y.shape[0]]
        out = model(x, state)
        grads = torch.autograd.grad(token_nll(out.logits, y).mean(), [params[n] for n in names])
        for n, g in zip(names, grads):
            sums[n] += g * g
        state = [(h.detach(), c.detach()) for h, c in out.state]
        batches, i = batches + 1, i + x.shape[0]
    assert batches == 8 and stats.tokens == 48 * 4
    for n in names:
        torch.testing.assert_close(stats.v[n], sums[n] / batches, rtol=1e-10, atol=1e-14, msg=n)
    # Krause's decay normaliser: the mean over tensors of each tensor's mean rms (not the mean over coordinates)
    assert stats.decay_norm == pytest.approx(sum(float(stats.v[n].sqrt().mean()) for n in names) / len(names))
    assert stats.decay_norm != pytest.approx(stats.mean_rms)


def test_a_token_budget_stops_after_the_batch_that_reaches_it():
    model = tiny_model()
    ids = torch.randint(0, VOCAB, (400,), generator=torch.Generator().manual_seed(1))
    stats = measure_grad_stats(model, ["layers.0.weight_hh"], ids, streams=5, seg_len=4, max_tokens=41)
    assert stats.tokens == 60  # three batches of 5 × 4 tokens
    with pytest.raises(ValueError, match="too few"):
        measure_grad_stats(model, ["layers.0.weight_hh"], ids[:9], streams=5, seg_len=4)
    assert isinstance(stats, GradStats)


def test_restricted_statistics_normalise_over_their_own_tensors():
    v = {"a": torch.full((4,), 4.0), "b": torch.full((2, 2), 16.0), "c": torch.full((3,), 1.0)}
    stats = GradStats(v, tokens=10)
    assert stats.decay_norm == pytest.approx((2.0 + 4.0 + 1.0) / 3)
    sub = stats.restricted(["a", "c"])
    assert list(sub.v) == ["a", "c"] and sub.tokens == 10
    assert sub.decay_norm == pytest.approx((2.0 + 1.0) / 2)
    with pytest.raises(ValueError, match="do not cover"):
        stats.restricted(["a", "d"])


def test_a_budget_beyond_the_split_reads_all_of_it_and_says_so(capsys):
    from dynlm.data.split import Split
    from dynlm.run.from_checkpoint import grad_stats_for

    model = tiny_model()
    n = 203
    ids = torch.randint(0, VOCAB, (n,), generator=torch.Generator().manual_seed(2))
    split = Split("train", ids, torch.zeros(n, dtype=torch.long), torch.arange(n), ["a"], torch.tensor([0]), n)
    names = ["layers.0.weight_hh"]
    whole, source = grad_stats_for(model, names, {}, "lm.pt", split, "", None, 4, 6, use_cache=False)
    assert source == "measured" and f"measuring them on all {n} train tokens" in capsys.readouterr().out
    beyond, _ = grad_stats_for(model, names, {}, "lm.pt", split, "", 10**8, 4, 6, use_cache=False)
    assert f"measuring them on all {n} train tokens" in capsys.readouterr().out
    assert beyond.tokens == whole.tokens == 48 * 4 and torch.equal(beyond.v[names[0]], whole.v[names[0]])
    grad_stats_for(model, names, {}, "lm.pt", split, "", 50, 4, 6, use_cache=False)
    assert "measuring them on 50 train tokens" in capsys.readouterr().out
