"""Data: WikiText-style corpora as token streams with article metadata, batching, meta-training streams."""
from .articles import article_line_starts, title_lines
from .batching import batchify, expected_seq_len, get_batch, sample_seq_len
from .corpus import Corpus, load_corpus
from .errors import DataError
from .holdout import HELDOUT, hold_out
from .meta_streams import MetaBatch, MetaStreams, deal_articles
from .sentencepiece_tokenizer import SentencePieceTokenizer
from .sources import SPLITS
from .split import Split, build_split
from .text_file import TEXT, TextFile, read_text_file
from .tokenizer import EOS, Tokenizer
from .tokenizer_state import tokenizer_from_state_dict
from .vocab import UNK, WordVocab

__all__ = [
    "Corpus",
    "DataError",
    "EOS",
    "HELDOUT",
    "MetaBatch",
    "MetaStreams",
    "SPLITS",
    "SentencePieceTokenizer",
    "TEXT",
    "TextFile",
    "Split",
    "Tokenizer",
    "UNK",
    "WordVocab",
    "article_line_starts",
    "batchify",
    "build_split",
    "deal_articles",
    "expected_seq_len",
    "get_batch",
    "hold_out",
    "load_corpus",
    "read_text_file",
    "sample_seq_len",
    "title_lines",
    "tokenizer_from_state_dict",
]
