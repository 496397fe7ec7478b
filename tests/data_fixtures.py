"""A small built-in corpus and a tokenizer trained on it, shared by the data/ tests.

Both are cached on disk under the session's pytest temp folder, so every test module that
asks gets the same files and only the first one pays for building them (about a second).
"""

import json
import pathlib

import numpy as np

from data.builtin_corpus import CorpusFiles, builtin_corpus
from data.packing import PackedRows
from data.tokenizer import Tokenizer, load_or_train_tokenizer

SMALL_CORPUS_BYTES = 150_000
SMALL_VOCAB = 800


def shared_dir(tmp_path_factory) -> pathlib.Path:
    """A folder shared by all data tests of one pytest session."""
    return tmp_path_factory.getbasetemp() / "meshlm-data-shared"


def small_corpus(tmp_path_factory) -> CorpusFiles:
    """The first ~150 KB of the built-in corpus, built once per session."""
    return builtin_corpus(shared_dir(tmp_path_factory) / "corpus", max_bytes=SMALL_CORPUS_BYTES)


def small_tokenizer(tmp_path_factory) -> Tokenizer:
    """A unigram tokenizer of SMALL_VOCAB pieces trained on small_corpus's train split."""
    corpus = small_corpus(tmp_path_factory)
    return load_or_train_tokenizer(shared_dir(tmp_path_factory) / "small.model", corpus.train,
                                   vocab_size=SMALL_VOCAB)


def numbered_rows(num_rows: int, seq_len: int = 8, pad_id: int = 0) -> PackedRows:
    """Rows whose every token is its row number + 10, so a batch shows which rows it holds."""
    tokens = np.repeat(np.arange(num_rows, dtype=np.int32)[:, None] + 10, seq_len, axis=1)
    segment_ids = np.ones((num_rows, seq_len), np.int32)
    positions = np.tile(np.arange(seq_len, dtype=np.int32), (num_rows, 1))
    return PackedRows(tokens, segment_ids, positions, pad_id=pad_id)


WORDS = ("alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi "
         "rho sigma tau upsilon phi chi psi omega river stone cloud paper light water").split()


def write_text_files(directory: pathlib.Path, num_docs: int = 120, seed: int = 0) -> list[str]:
    """A .txt of paragraphs and a .jsonl of records (each half the docs); returns the docs."""
    rng = np.random.default_rng(seed)
    docs = [" ".join(rng.choice(WORDS, int(rng.integers(3, 90)))) + f" doc{i}."
            for i in range(num_docs)]
    directory.mkdir(parents=True, exist_ok=True)
    half = num_docs // 2
    (directory / "a.txt").write_text("\n\n".join(docs[:half]) + "\n", encoding="utf-8")
    (directory / "b.jsonl").write_text(
        "".join(json.dumps({"text": d, "id": i}) + "\n" for i, d in enumerate(docs[half:])),
        encoding="utf-8")
    return docs


def small_store_tokenizer(tmp_path_factory) -> Tokenizer:
    """A 120-piece BPE tokenizer trained on write_text_files' documents, once per session."""
    base = shared_dir(tmp_path_factory)
    model = base / "store-tok.model"
    if not model.exists():
        docs = write_text_files(base / "tok-text")
        text = base / "store-tok.txt"
        text.write_text("\n".join(docs) + "\n", encoding="utf-8")
        return load_or_train_tokenizer(model, text, vocab_size=120, model_type="bpe")
    return Tokenizer(model)
