"""SentencePiece: trained on train, cached next to the data (or in the cache folder), exact round trip."""
import io
import os
import pickle

import pytest
import torch

from dynlm.config import DataConfig
from dynlm.data import DataError, SentencePieceTokenizer, load_corpus, tokenizer_from_state_dict

VOCAB = 500


def spm_cfg(folder, **kw):
    return DataConfig(**{"dir": str(folder), "tokenizer": "sentencepiece", "vocab_size": VOCAB, **kw})


def read_lines(path):
    with open(path, encoding="utf-8", newline="") as f:
        return f.read().split("\n")[:-1]


def test_trains_caches_and_reuses(wikitext2_slice_dir):
    c1 = load_corpus(spm_cfg(wikitext2_slice_dir), splits=("valid",))
    path = c1.tokenizer_path
    assert path is not None and os.path.dirname(path) == str(wikitext2_slice_dir)
    assert os.path.basename(path).startswith(f"spm-unigram-{VOCAB}-") and path.endswith(".model")
    assert c1.tokenizer.vocab_size == VOCAB
    mtime = os.stat(path).st_mtime_ns

    c2 = load_corpus(spm_cfg(wikitext2_slice_dir), splits=("valid",))
    assert c2.tokenizer_path == path and os.stat(path).st_mtime_ns == mtime  # reused, not retrained
    assert torch.equal(c1.splits["valid"].ids, c2.splits["valid"].ids)

    c3 = load_corpus(spm_cfg(wikitext2_slice_dir, vocab_size=VOCAB + 100), splits=("valid",))
    assert c3.tokenizer_path != path and c3.tokenizer.vocab_size == VOCAB + 100  # another size retrains


def test_split_layout(wikitext2_slice_dir):
    word = load_corpus(DataConfig(dir=str(wikitext2_slice_dir)), splits=("valid",)).splits["valid"]
    c = load_corpus(spm_cfg(wikitext2_slice_dir), splits=("valid",))
    tok, v = c.tokenizer, c.splits["valid"]
    lines = read_lines(wikitext2_slice_dir / "valid.txt")
    # <eos> is one id, the last token of every line and nowhere else
    assert tok.id_to_token(tok.eos_id) == "<eos>"
    assert tok.encode_line(" ") == [tok.eos_id]
    assert int((v.ids == tok.eos_id).sum()) == len(lines) and v.ids[-1] == tok.eos_id
    # articles and per-word counts do not depend on the tokenizer
    assert v.titles == word.titles and v.num_words == word.num_words == word.num_tokens
    assert v.num_tokens > v.num_words
    assert int(v.article_lengths.sum()) == v.num_tokens
    assert (v.position[v.article_starts] == 0).all()
    assert tok.decode_text(v.article(1)[:30]).startswith(f"= {v.titles[1]} =")  # starts with its title


def test_round_trip_and_unk(wikitext2_slice_dir):
    tok = load_corpus(spm_cfg(wikitext2_slice_dir), splits=("valid",)).tokenizer
    for line in read_lines(wikitext2_slice_dir / "valid.txt"):  # includes Japanese, accents, dashes
        ids = tok.encode_line(line)
        assert tok.decode_text(ids) == " ".join(line.split())
        assert len(tok.decode(ids)) == len(ids)
    ids = tok.encode_line(" the <unk> war ")
    assert "\u2581<unk>" in tok.decode(ids)  # the word <unk> of tokenized WikiText is one piece


def test_state_dict_and_pickle(wikitext2_slice_dir):
    tok = load_corpus(spm_cfg(wikitext2_slice_dir), splits=("test",)).tokenizer
    buf = io.BytesIO()
    torch.save(tok.state_dict(), buf)
    buf.seek(0)
    restored = tokenizer_from_state_dict(torch.load(buf, weights_only=True))
    assert isinstance(restored, SentencePieceTokenizer) and restored.vocab_size == tok.vocab_size
    line = " Du Fu was a prominent Chinese poet of the Tang dynasty . "
    assert restored.encode_line(line) == tok.encode_line(line)
    assert pickle.loads(pickle.dumps(tok)).encode_line(line) == tok.encode_line(line)


def test_read_only_data_folder_uses_cache_dir(wikitext2_slice_dir, tmp_path):
    cache = tmp_path / "cache"
    os.chmod(wikitext2_slice_dir, 0o555)  # marked read-only (even root must not write there)
    try:
        c = load_corpus(spm_cfg(wikitext2_slice_dir, cache_dir=str(cache)), splits=("test",))
    finally:
        os.chmod(wikitext2_slice_dir, 0o755)
    assert os.path.dirname(c.tokenizer_path) == str(cache)
    assert not list(wikitext2_slice_dir.glob("*.model"))


def test_vocab_too_small(wikitext2_slice_dir):
    with pytest.raises(DataError, match=r"SentencePiece training failed with vocab_size=100.*Fix"):
        load_corpus(spm_cfg(wikitext2_slice_dir, vocab_size=100), splits=("test",))
