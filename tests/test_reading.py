"""The one reading loop: static reading does not depend on the chunk size, and `weights` replace the static ones."""
import copy

import torch

from dynlm.dynamic.reading import read_stream, segment_bounds

from dynamic_helpers import VOCAB, tiny_model


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
