"""The one reading loop: static reading does not depend on the chunk size, and `weights` replace the static ones."""
import copy

import pytest
import torch

from dynamic_helpers import VOCAB, tiny_model
from dynlm.dynamic.reading import read_stream, segment_bounds


def _ids(n=97, seed=0):
    return torch.randint(0, VOCAB, (n,), generator=torch.Generator().manual_seed(seed))


def test_static_reading_does_not_depend_on_the_chunk_size():
    model = tiny_model(torch.float64, dropout=True)  # dropout must be off while reading
    ids = _ids()
    ref = read_stream(model, ids, 0, 256)
    assert ref.shape == ids.shape and model.training
    for chunk in (1, 5, 32, 96):
        torch.testing.assert_close(read_stream(model, ids, 0, chunk), ref, rtol=0, atol=1e-6)
    # with restarts the pieces are read from a fresh state: different numbers, same chunk independence
    restarted = read_stream(model, ids, 0, 256, restarts=[0, 40])
    assert not torch.allclose(restarted[40:], ref[40:])
    torch.testing.assert_close(read_stream(model, ids, 0, 7, restarts=[0, 40]), restarted, rtol=0, atol=1e-6)


def test_weights_replace_the_static_ones_for_that_read_only():
    model = tiny_model()
    other = copy.deepcopy(model)
    with torch.no_grad():
        for p in other.parameters():
            p.mul_(1.5)
    ids = _ids(40)
    swapped = read_stream(model, ids, 0, 16, weights=dict(other.named_parameters()))
    torch.testing.assert_close(swapped, read_stream(other, ids, 0, 16))
    assert not torch.allclose(swapped, read_stream(model, ids, 0, 16))


def test_segments_never_cross_a_restart():
    assert segment_bounds(12, 5, [0, 7]) == [(0, 5, True), (5, 7, False), (7, 12, True)]
    assert segment_bounds(7, 5) == [(0, 5, False), (5, 7, False)]


def _reference_adaptive(model, rule, names, ids, seg_len, restarts=()):
    """The standard protocol spelled out: one primed stream, batch 1, score a segment, then update."""
    from dynlm.dynamic.reading_state import fresh_state
    from dynlm.dynamic.segment import adapt_segment
    from dynlm.model import static_weights

    theta0 = {n: t.detach() for n, t in static_weights(model, names).items()}
    stream = torch.cat([ids.new_tensor([0]), ids])
    state = fresh_state(model, theta0, 1, rule.init_learner_state({n: t.unsqueeze(0) for n, t in theta0.items()}))
    out = []
    for a, e, restart in segment_bounds(ids.numel(), seg_len, list(restarts) or None):
        if restart:
            state = state.reset(torch.ones(1, dtype=torch.bool), theta0)
        _, nll, state, _ = adapt_segment(model, rule, state, theta0, stream[a:e, None], stream[a + 1:e + 1, None])
        out.append(nll[:, 0])
    return torch.cat(out)


def _rule(model):
    from dynamic_helpers import random_stats
    from dynlm.dynamic.dyneval import DIRECTIONS_OFF, DynEvalRule
    from dynlm.dynamic.fast_weights import select_dynamic

    names = select_dynamic(model, ["*"])
    return DynEvalRule(names, random_stats(model, names), eta=0.01, lam=0.02, eps=1e-3, **DIRECTIONS_OFF), names


def test_one_stream_is_the_standard_protocol_token_for_token():
    model = tiny_model().eval()
    rule, names = _rule(model)
    ids = _ids(61)
    for restarts in ((), (0, 20, 43)):
        ours = read_stream(model, ids, 0, 5, rule=rule, names=names, restarts=list(restarts) or None, starts=[0])
        assert torch.equal(ours, _reference_adaptive(model, rule, names, ids, 5, restarts))


def test_several_streams_read_each_chunk_as_if_alone():
    """B streams side by side: each chunk from the static weights and a zero state, as if read on its own
    (its shorter last segment padded and masked out of the loss)."""
    model = tiny_model(torch.float64).eval()
    rule, names = _rule(model)
    ids = _ids(97)
    starts = [0, 30, 71]
    together = read_stream(model, ids, 0, 4, rule=rule, names=names, starts=starts)
    for a, e in zip(starts, starts[1:] + [97]):
        alone = read_stream(model, ids[a:e], 0, 4, rule=rule, names=names)
        torch.testing.assert_close(together[a:e], alone, rtol=1e-9, atol=1e-12)
    static = read_stream(model, ids, 0, 16, starts=starts)
    torch.testing.assert_close(static[30:71], read_stream(model, ids[30:71], 0, 16), rtol=1e-9, atol=1e-12)


def test_streams_start_at_article_boundaries_of_about_equal_length():
    from dynlm.dynamic.reading import stream_starts

    articles = [0, 10, 25, 40, 52, 80, 90]
    assert stream_starts(articles, 100, 1) == [0]
    assert stream_starts(articles, 100, 2) == [0, 52]
    assert stream_starts(articles, 100, 4) == [0, 25, 52, 80]
    assert stream_starts(articles, 100, 7) == articles
    with pytest.raises(ValueError, match="eval.streams"):
        stream_starts(articles, 100, 8)
