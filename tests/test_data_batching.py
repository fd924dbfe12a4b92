"""AWD-LSTM batching: stream layout, next-token alignment, reproducible variable BPTT."""
import pytest
import torch

from dynlm.data import batchify, get_batch, sample_seq_len


def test_batchify_layout():
    ids = torch.arange(103)
    src = batchify(ids, 4)
    assert src.shape == (25, 4) and src.is_contiguous()
    for b in range(4):  # column b is the b-th contiguous chunk; the 3-token tail is dropped
        assert torch.equal(src[:, b], ids[b * 25 : (b + 1) * 25])
    with pytest.raises(ValueError):
        batchify(torch.arange(3), 4)


def test_get_batch_alignment():
    ids = torch.arange(1000) * 7 % 997  # any stream with distinct neighbours
    src = batchify(ids, 5)  # [200, 5]
    x, y = get_batch(src, 10, 35)
    assert x.shape == y.shape == (35, 5)
    assert torch.equal(x[1:], y[:-1])
    assert torch.equal(y[-1], src[45])
    for b in range(5):  # y is the next token of x in the original stream
        start = b * 200 + 10
        assert torch.equal(x[:, b], ids[start : start + 35])
        assert torch.equal(y[:, b], ids[start + 1 : start + 36])
    x, y = get_batch(src, 190, 35)  # the last batch is shorter: T = len - 1 - i
    assert x.shape == (9, 5) and torch.equal(y[-1], src[199])
    with pytest.raises(IndexError):
        get_batch(src, 199, 35)


def test_batchify_metadata_alongside_ids(toy_data_dir):
    from dynlm.config import DataConfig
    from dynlm.data import load_corpus

    split = load_corpus(DataConfig(dir=str(toy_data_dir)), splits=("test",)).splits["test"]
    ids, art = batchify(split.ids, 3), batchify(split.article_id, 3)
    assert ids.shape == art.shape
    _, y = get_batch(ids, 0, 20)
    _, y_art = get_batch(art, 0, 20)  # the article of every target token
    assert torch.equal(y_art[:, 0], split.article_id[1:21])


def test_sample_seq_len_is_deterministic_and_bounded():
    def draw(seed, n=2000, bptt=70):
        g = torch.Generator().manual_seed(seed)
        return [sample_seq_len(bptt, g) for _ in range(n)]

    a = draw(1)
    assert a == draw(1) and a != draw(2)
    assert min(a) >= 5 and max(a) <= 110
    short = sum(1 for s in a if s < 52)  # the bptt/2 = 35 branch, about 5% of draws
    assert 40 < short < 170
    assert 67 < sum(s for s in a if s >= 52) / (len(a) - short) < 71  # mean about bptt (int() truncates)
    assert all(5 <= s <= 43 for s in draw(3, 200, bptt=3))
