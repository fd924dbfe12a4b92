"""Meta-training streams: whole-article segments, next-token targets, resets, determinism, ranks."""
import pytest
import torch

from dynlm.config import DataConfig
from dynlm.data import DataError, MetaStreams, deal_articles, load_corpus


@pytest.fixture(scope="module")
def toy_train(toy_data_dir):
    return load_corpus(DataConfig(dir=str(toy_data_dir)), splits=("train",)).splits["train"]


def check_batches(split, ms, num_batches):
    L = ms.seg_len
    last = None
    for k in range(num_batches):
        b = ms.batch(k)
        assert b.x.shape == b.y.shape == (L, ms.num_local_streams)
        idx = split.article_starts[b.article_id] + b.position  # where each segment starts in the stream
        tok = idx.unsqueeze(0) + torch.arange(L).unsqueeze(1)
        assert torch.equal(b.x, split.ids[tok])
        assert torch.equal(b.y, split.ids[tok + 1])  # y is the next token
        # segments never cross an article: inputs and targets all sit in the segment's article
        assert (split.article_id[tok] == b.article_id).all()
        assert (split.article_id[tok + 1] == b.article_id).all()
        assert torch.equal(b.new_article, b.position == 0)
        if last is not None:  # a stream either goes on reading its article or starts a new one
            cont = ~b.new_article
            assert (b.article_id[cont] == last.article_id[cont]).all()
            assert torch.equal(b.position[cont], last.position[cont] + L)
        last = b


def test_segments_on_toy_data(toy_train):
    ms = MetaStreams(toy_train, num_streams=4, seg_len=16)
    check_batches(toy_train, ms, 2 * ms.segments_per_epoch + 3)
    assert ms.batch(0).new_article.all()


def test_segments_on_wikitext2(wikitext2_corpus):
    train = wikitext2_corpus.splits["train"]
    ms = MetaStreams(train, num_streams=16, seg_len=70)
    check_batches(train, ms, 30)
    # every usable article is dealt to exactly one stream, and the streams are balanced
    dealt = sorted(a for s in ms.global_stream_articles for a in s)
    usable = [a for a, n in enumerate(train.article_lengths.tolist()) if (n - 1) // 70 > 0]
    assert dealt == usable
    seg = (train.article_lengths - 1) // 70
    cycles = [int(seg[s].sum()) for s in ms.global_stream_articles]
    assert ms.segments_per_epoch == max(cycles)
    assert max(cycles) - min(cycles) <= int(seg.max())


def test_every_article_segment_is_read_once_per_cycle(toy_train):
    ms = MetaStreams(toy_train, num_streams=3, seg_len=10)
    seg = (toy_train.article_lengths - 1) // 10
    for c, arts in enumerate(ms.stream_articles):
        cycle = int(seg[arts].sum())
        seen = [(int(b.article_id[c]), int(b.position[c])) for b in map(ms.batch, range(cycle))]
        assert seen == [(a, m * 10) for a in arts for m in range(int(seg[a]))]
        assert (ms.batch(cycle).article_id[c], ms.batch(cycle).position[c]) == (arts[0], 0)  # cycles


def test_deterministic(toy_train):
    a, b = MetaStreams(toy_train, 4, 12), MetaStreams(toy_train, 4, 12)
    for k in (0, 1, 7, 1000):
        assert all(torch.equal(u, v) for u, v in zip(a.batch(k), b.batch(k)))


def test_ranks_partition_the_streams(toy_train):
    whole = MetaStreams(toy_train, 4, 12)
    r0 = MetaStreams(toy_train, 4, 12, rank=0, world_size=2)
    r1 = MetaStreams(toy_train, 4, 12, rank=1, world_size=2)
    assert r0.segments_per_epoch == r1.segments_per_epoch == whole.segments_per_epoch
    for k in range(40):
        w, b0, b1 = whole.batch(k), r0.batch(k), r1.batch(k)
        for field_w, f0, f1 in zip(w, b0, b1):  # rank r holds global streams r::world_size
            assert torch.equal(field_w[..., 0::2], f0)
            assert torch.equal(field_w[..., 1::2], f1)


def test_deal_articles_balances():
    assert deal_articles([5, 0, 3, 3, 1], 2) == [[0, 4], [2, 3]]  # loads 6 and 6; article 1 is empty
    assert deal_articles([1, 1, 1], 3) == [[0], [1], [2]]


def test_bad_arguments(toy_train):
    with pytest.raises(DataError, match="not divisible"):
        MetaStreams(toy_train, 3, 10, rank=0, world_size=2)
    with pytest.raises(DataError, match="fewer than num_streams"):
        MetaStreams(toy_train, 13, 10)
    with pytest.raises(DataError, match="bad rank"):
        MetaStreams(toy_train, 4, 10, rank=2, world_size=2)
