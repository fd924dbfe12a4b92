"""Corpus loading: exact WikiText-2 statistics, article metadata, tokenizer state, clear errors."""
import io

import pytest
import torch

from dynlm.config import DataConfig
from dynlm.data import (
    DataError,
    WordVocab,
    article_line_starts,
    load_corpus,
    tokenizer_from_state_dict,
)
from dynlm.data.sources import decode_lines, lines_sha256, normalise_hub_rows

# Published figures, and the checksums of /work/shared/data/wikitext-2 (see its README).
TOKENS = {"train": 2_088_628, "valid": 217_646, "test": 245_569}
ARTICLES = {"train": 600, "valid": 60, "test": 60}
SHA256 = {
    "train": "9e9fa1ad55b1c2c95b08e37dd8e653f638fac2c6de904b79e813611eefbc985f",
    "valid": "f0737ed31fc1329026e95cb8b98e19c2a182c39c240ab909dc31abf2f8af58e8",
    "test": "d790b833ef8cf03a90db7bf1271b7520b83c45ce07ba3c1a9699df81e239eca0",
}


# ---- the real data -----------------------------------------------------------------------------


def test_wikitext2_counts(wikitext2_corpus, wikitext2_dir):
    c = wikitext2_corpus
    assert c.tokenizer.kind == "word"
    assert c.tokenizer.vocab_size == 33_278
    assert c.tokenizer.id_to_token(c.tokenizer.eos_id) == "<eos>"
    assert c.source == str(wikitext2_dir.resolve())
    for s in TOKENS:
        split = c.splits[s]
        assert split.num_tokens == TOKENS[s]
        assert split.num_words == TOKENS[s]  # word level: one word per token
        assert split.num_articles == ARTICLES[s]
        assert c.checksums[s] == SHA256[s]
        assert split.ids.dtype == torch.long and split.ids.max() < c.tokenizer.vocab_size


def test_wikitext2_articles(wikitext2_corpus):
    c = wikitext2_corpus
    assert c.splits["train"].titles[0] == "Valkyria Chronicles III"
    assert c.splits["valid"].titles[0] == "Homarus gammarus"
    for split in c.splits.values():
        n = split.num_tokens
        assert split.article_id.shape == split.position.shape == (n,)
        assert int(split.article_lengths.sum()) == n
        assert (split.article_lengths > 0).all()
        assert split.article_starts[0] == 0
        assert (split.article_id[1:] >= split.article_id[:-1]).all()
        assert int(split.article_id[-1]) == split.num_articles - 1
        # positions restart at 0 exactly at article starts and count up by one in between
        assert (split.position[split.article_starts] == 0).all()
        assert int((split.position == 0).sum()) == split.num_articles
        step = split.position[1:] - split.position[:-1]
        assert ((step == 1) | (split.position[1:] == 0)).all()
        assert torch.equal(split.article_id[split.article_starts], torch.arange(split.num_articles))


def test_article_text_starts_with_its_title(wikitext2_corpus):
    c = wikitext2_corpus
    split = c.splits["train"]
    # article 0 starts with the leading blank line; later ones with their title line
    assert c.tokenizer.decode(split.article(0)[:6]) == ["<eos>", "=", "Valkyria", "Chronicles", "III", "="]
    a1 = c.tokenizer.decode(split.article(1)[:3])
    assert a1 == ["=", "Tower", "Building"]
    # the blank line before a title is the previous article's last token
    assert c.tokenizer.decode(split.article(0)[-2:]) == ["<eos>", "<eos>"]


def test_tokenizer_state_dict_round_trip(wikitext2_corpus):
    tok = wikitext2_corpus.tokenizer
    buf = io.BytesIO()
    torch.save(tok.state_dict(), buf)
    buf.seek(0)
    restored = tokenizer_from_state_dict(torch.load(buf, weights_only=True))
    assert isinstance(restored, WordVocab)
    assert restored.itos == tok.itos
    line = " The game began development in 2010 . "
    assert restored.encode_line(line) == tok.encode_line(line)
    assert restored.decode(restored.encode_line(line)) == line.split() + ["<eos>"]


def test_unseen_word_maps_to_unk(wikitext2_corpus):
    tok = wikitext2_corpus.tokenizer
    assert tok.encode_line(" qwertyuiop ") == [tok.stoi["<unk>"], tok.eos_id]


def test_given_tokenizer_reads_only_the_requested_split(wikitext2_dir, wikitext2_corpus, tmp_path):
    # An evaluator restores the tokenizer from its checkpoint: no train.txt is needed.
    (tmp_path / "test.txt").write_bytes((wikitext2_dir / "test.txt").read_bytes())
    c = load_corpus(DataConfig(dir=str(tmp_path)), splits=("test",), tokenizer=wikitext2_corpus.tokenizer)
    assert list(c.splits) == ["test"] and list(c.checksums) == ["test"]
    assert torch.equal(c.splits["test"].ids, wikitext2_corpus.splits["test"].ids)


# ---- small inputs --------------------------------------------------------------------------------


def test_toy_corpus(toy_data_dir):
    c = load_corpus(DataConfig(dir=str(toy_data_dir)), splits=("valid",))
    assert list(c.splits) == ["valid"]
    assert set(c.checksums) == {"train", "valid"}  # train was read to build the vocabulary
    v = c.splits["valid"]
    assert v.titles == ["Valid article 0", "Valid article 1", "Valid article 2"]
    assert int(v.article_lengths.sum()) == v.num_tokens == v.num_words


def test_article_rules():
    lines = [
        " ",
        " = First = ",
        " ",
        " a b ",
        " = Goals ; A = ",  # a table legend: no blank line around it
        " = = Section = = ",
        " ",
        " = Second = ",
        " ",
        " c ",
        " = Not a title at the end = ",
    ]
    starts, titles = article_line_starts(lines)
    assert titles == ["First", "Second"]
    assert starts == [0, 7]  # the leading blank joins article 0; line 6 (blank) is article 0's
    assert article_line_starts([" = T = ", " ", " x "]) == ([0], ["T"])  # title on line 0
    assert article_line_starts([" x ", " y "]) == ([0], ["(untitled)"])


def test_line_splitting_is_exact():
    # Only "\n" ends a line: form feeds, U+2028 and lone "\r" stay inside it; CRLF is tolerated.
    assert decode_lines(b" a \x0c b \n \xe2\x80\xa8 \n", "f") == [" a \x0c b ", " \u2028 "]
    assert decode_lines(b" a \r b \r\n c \r\n", "f") == [" a \r b ", " c "]
    assert decode_lines(b" a \n b ", "f") == [" a ", " b "]  # no final newline: the last line still counts
    assert decode_lines(b" \n\n", "f") == [" ", ""]


def test_hub_rows_normalise_to_the_file_layout(wikitext2_dir):
    # HF wikitext rows: file lines with "\n" kept, blank lines as "".
    with open(wikitext2_dir / "valid.txt", encoding="utf-8", newline="") as f:
        lines = f.read().split("\n")[:-1]
    rows = ["" if not line.strip() else line + "\n" for line in lines]
    assert normalise_hub_rows(rows) == lines
    assert lines_sha256(normalise_hub_rows(rows)) == SHA256["valid"]


# ---- errors --------------------------------------------------------------------------------------


def load(folder, **kw):
    return load_corpus(DataConfig(dir=str(folder), **kw))


def test_missing_folder(tmp_path):
    with pytest.raises(DataError, match=r"does not exist.*data\.dir=PATH"):
        load(tmp_path / "nope")


def test_folder_without_split_file(tmp_path):
    (tmp_path / "train.txt").write_text(" a \n")
    with pytest.raises(DataError, match=r"no valid split: looked for valid\.txt, wiki\.valid\.tokens"):
        load(tmp_path)


def test_wiki_tokens_names(tmp_path):
    for s in ("train", "valid", "test"):
        (tmp_path / f"wiki.{s}.tokens").write_text(" \n = T = \n \n a b \n")
    c = load(tmp_path)
    assert c.splits["test"].num_tokens == 9 and c.splits["test"].titles == ["T"]


def test_empty_file(tmp_path):
    for s in ("train", "valid", "test"):
        (tmp_path / f"{s}.txt").write_text(" a \n")
    (tmp_path / "valid.txt").write_text("")
    with pytest.raises(DataError, match=r"valid\.txt is empty"):
        load(tmp_path)


def test_non_utf8_file(tmp_path):
    for s in ("train", "valid", "test"):
        (tmp_path / f"{s}.txt").write_text(" a \n")
    (tmp_path / "test.txt").write_bytes(" caf\xe9 \n".encode("latin-1"))
    with pytest.raises(DataError, match=r"test\.txt is not valid UTF-8: byte 0xe9 at byte offset 4"):
        load(tmp_path)


def test_unseen_word_without_unk(tmp_path):
    (tmp_path / "train.txt").write_text(" a b \n")
    (tmp_path / "valid.txt").write_text(" a c \n")
    (tmp_path / "test.txt").write_text(" a \n")
    with pytest.raises(DataError, match=r"valid\.txt: word 'c' is not in the vocabulary.*<unk>"):
        load(tmp_path)


def test_unknown_tokenizer_and_split(tmp_path):
    with pytest.raises(DataError, match="unknown data.tokenizer"):
        load(tmp_path, tokenizer="bytes")
    with pytest.raises(DataError, match="unknown split"):
        load_corpus(DataConfig(dir=str(tmp_path)), splits=("dev",))


def test_hub_unreachable(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    # The libraries read these variables at import; patch them too in case they were imported already.
    import datasets
    import huggingface_hub

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    expected = r"could not load .*wikitext/wikitext-2-v1 .*Fix: pass data\.dir=PATH"
    with pytest.raises(DataError, match=expected):
        load_corpus(DataConfig(dir=None), splits=("valid",))


def test_hub_path_matches_local_files(wikitext2_dir, wikitext2_corpus, monkeypatch):
    # The hub is unreachable here: serve HF-layout rows of the local files through load_dataset.
    import datasets

    def hf_rows(split):
        with open(wikitext2_dir / f"{split}.txt", encoding="utf-8", newline="") as f:
            return ["" if not line.strip() else line for line in f]  # rows keep their "\n"

    fake = datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_dict({"text": hf_rows("train")}),
            "validation": datasets.Dataset.from_dict({"text": hf_rows("valid")}),
        }
    )
    calls = []
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: calls.append(a) or fake)
    c = load_corpus(DataConfig(dir=None), splits=("valid",))
    assert calls == [("Salesforce/wikitext", "wikitext-2-v1")]
    assert c.source == "hub:Salesforce/wikitext/wikitext-2-v1"
    assert c.checksums == {"train": SHA256["train"], "valid": SHA256["valid"]}  # same text, same hash
    assert c.tokenizer.itos == wikitext2_corpus.tokenizer.itos
    v, ref = c.splits["valid"], wikitext2_corpus.splits["valid"]
    assert torch.equal(v.ids, ref.ids) and torch.equal(v.article_starts, ref.article_starts)
    assert v.titles == ref.titles
