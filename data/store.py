"""The prepared built-in data of one workdir: corpus, tokenizer and packed rows, made once.

Everything is cached and reused: the corpus under cache_dir (shared by workdirs), the
tokenizer at workdir/tokenizer.model, and the packed rows under workdir/data/<key>/ where
the key names the tokenizer file, the corpus and seq_len. Rows are written to a temporary
folder and renamed into place, so an interrupted run never leaves half a store.
"""

import dataclasses
import hashlib
import json
import os
import pathlib
import shutil
import tempfile
from collections.abc import Iterator

from data.corpus import CorpusFiles, builtin_corpus, read_documents
from data.packing import PACK_WINDOW, PackedRows, pack_documents
from data.tokenizer import Tokenizer, load_or_train_tokenizer

# Bump when packing changes, so old stores are not reused.
STORE_VERSION = 1
_ENCODE_CHUNK = 4096  # documents per encode_batch call: bounds memory, keeps threads busy


@dataclasses.dataclass
class PreparedData:
    """What training needs from the data side: the tokenizer and packed rows per split."""

    tokenizer: Tokenizer
    train: PackedRows
    validation: PackedRows
    corpus: CorpusFiles
    key: str  # names the tokenizer, corpus and packing: equal keys mean equal rows


def prepare_builtin(workdir: str | os.PathLike, *, cache_dir: str | os.PathLike, seq_len: int,
                    vocab_size: int, model_type: str = "unigram",
                    max_bytes: int | None = None) -> PreparedData:
    """Builds or reuses the built-in corpus, its tokenizer and packed rows for workdir."""
    if seq_len < 4:
        raise ValueError(f"seq_len must be at least 4, got {seq_len}")
    workdir = pathlib.Path(workdir)
    corpus = builtin_corpus(cache_dir, max_bytes)
    tokenizer = load_or_train_tokenizer(workdir / "tokenizer.model", corpus.train,
                                        vocab_size=vocab_size, model_type=model_type)
    key = _store_key(tokenizer, corpus, seq_len)
    store = workdir / "data" / key
    if not store.is_dir():
        _build_store(store, tokenizer, corpus, seq_len)
    return PreparedData(tokenizer=tokenizer, train=PackedRows.load(store / "train"),
                        validation=PackedRows.load(store / "validation"), corpus=corpus, key=key)


def _store_key(tokenizer: Tokenizer, corpus: CorpusFiles, seq_len: int) -> str:
    """A short hash of everything that decides the packed rows."""
    identity = {
        "tokenizer": tokenizer.sha256(), "corpus": corpus.train.parent.name,
        "sizes": [corpus.train_bytes, corpus.validation_bytes, corpus.train_docs,
                  corpus.validation_docs],
        "seq_len": seq_len, "window": PACK_WINDOW, "version": STORE_VERSION,
    }
    return hashlib.blake2b(json.dumps(identity).encode(), digest_size=8).hexdigest()


def _build_store(store: pathlib.Path, tokenizer: Tokenizer, corpus: CorpusFiles,
                 seq_len: int) -> None:
    """Tokenizes and packs both splits into a temporary folder, then renames it to store."""
    store.parent.mkdir(parents=True, exist_ok=True)
    staging = pathlib.Path(tempfile.mkdtemp(prefix=f".{store.name}.tmp-", dir=store.parent))
    try:
        for split, path in (("train", corpus.train), ("validation", corpus.validation)):
            rows = pack_documents(_encoded(tokenizer, path), seq_len, cls_id=tokenizer.cls_id,
                                  sep_id=tokenizer.sep_id, pad_id=tokenizer.pad_id)
            rows.save(staging / split)
        try:
            os.rename(staging, store)
        except OSError:
            if not store.is_dir():  # else a concurrent run finished first; keep its store
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _encoded(tokenizer: Tokenizer, path: pathlib.Path) -> Iterator[list[int]]:
    """The token ids of each document of a corpus file, encoded in batches."""
    docs = read_documents(path)
    for start in range(0, len(docs), _ENCODE_CHUNK):
        yield from tokenizer.encode_batch(docs[start:start + _ENCODE_CHUNK])
