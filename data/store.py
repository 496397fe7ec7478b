"""The prepared data of one workdir: text or a token store, tokenizer and packed rows, made once.

Everything is cached and reused: the corpus under cache_dir (shared by workdirs), the
tokenizer at workdir/tokenizer.model, and the packed rows under workdir/data/<key>/ where
the key names the tokenizer file, the corpus and seq_len. Rows are written to a temporary
folder and renamed into place, so an interrupted run never leaves half a store.

Other sources go through a token store (data/token_store.py): `store:<dir>` is one made by
`python -m data.prepare`; files: and tfds: sources are tokenized on the fly into a store
under workdir/data/source-<key>/ (fine for small data). Either store's documents are then
packed shard by shard into rows under workdir/data/<key>/, keyed by its content hash.
"""

import dataclasses
import hashlib
import json
import os
import pathlib
import shutil
import tempfile
from collections.abc import Iterator

import numpy as np

from data.corpus import CorpusFiles, builtin_corpus, read_documents
from data.packing import PACK_WINDOW, PackedRows, pack_documents
from data.sources import DataError, DecodeCounts, SourceSpec, resolve_files, source_documents
from data.token_store import TokenStore, write_store
from data.tokenizer import (Tokenizer, load_or_train_tokenizer,
                            train_tokenizer_on_documents)

# Bump when packing changes, so old stores are not reused.
STORE_VERSION = 1
_ENCODE_CHUNK = 4096  # documents per encode_batch call: bounds memory, keeps threads busy


@dataclasses.dataclass
class PreparedData:
    """What training needs from the data side: the tokenizer and packed rows per split."""

    tokenizer: Tokenizer
    train: PackedRows
    validation: PackedRows
    corpus: CorpusFiles | TokenStore  # where the rows came from; describe() says it
    key: str  # names the tokenizer, corpus and packing: equal keys mean equal rows

    def validation_documents(self, limit: int = 2000) -> list[str]:
        """Held-out documents as text: the built-in file's, or limit decoded from a store."""
        if isinstance(self.corpus, CorpusFiles):
            return read_documents(self.corpus.validation)
        docs = self.corpus.documents("validation")
        return [self.tokenizer.decode(ids) for ids, _ in zip(docs, range(limit))]


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


def prepare_store(workdir: str | os.PathLike, store_dir: str | os.PathLike, *, seq_len: int,
                  vocab_size: int) -> PreparedData:
    """Packs a token store's documents into rows for workdir, reusing rows already packed."""
    workdir = pathlib.Path(workdir)
    store = TokenStore(store_dir)
    tokenizer = Tokenizer(store.tokenizer_path)
    if tokenizer.sha256() != store.manifest["tokenizer"]["sha256"]:
        raise DataError(f"{store.tokenizer_path} is not the tokenizer recorded in the store's "
                        "manifest: the store is damaged; prepare it again")
    if tokenizer.vocab_size != vocab_size:
        raise DataError(f"store {store.directory} was tokenized with {tokenizer.vocab_size} "
                        f"pieces but model.vocab_size={vocab_size}; set "
                        f"--config.model.vocab_size={tokenizer.vocab_size}")
    _adopt_tokenizer(workdir / "tokenizer.model", tokenizer)
    identity = {"store": store.content_hash, "seq_len": seq_len, "window": PACK_WINDOW,
                "version": STORE_VERSION}
    key = hashlib.blake2b(json.dumps(identity).encode(), digest_size=8).hexdigest()
    rows_dir = workdir / "data" / key
    if not rows_dir.is_dir():
        _pack_store(rows_dir, store, tokenizer, seq_len)
    return PreparedData(tokenizer=tokenizer, train=PackedRows.load(rows_dir / "train"),
                        validation=PackedRows.load(rows_dir / "validation"), corpus=store,
                        key=key)


def prepare_source(workdir: str | os.PathLike, spec: SourceSpec, *, seq_len: int,
                   vocab_size: int, model_type: str = "unigram", text_field: str = "text",
                   tfds_data_dir: str = "") -> PreparedData:
    """Tokenizes a files: or tfds: source on the fly into workdir (small data), then packs it."""
    workdir = pathlib.Path(workdir)
    model_path = workdir / "tokenizer.model"
    read = dict(text_field=text_field, tfds_data_dir=tfds_data_dir)
    if model_path.exists():
        tokenizer = load_or_train_tokenizer(model_path, "", vocab_size=vocab_size)
    else:
        tokenizer = train_tokenizer_on_documents(
            source_documents(spec, "train", **read), model_path, vocab_size=vocab_size,
            model_type=model_type)
    identity = {"source": spec.describe(), **read, "tokenizer": tokenizer.sha256(),
                "files": _file_stats(spec), "version": STORE_VERSION}
    key = hashlib.blake2b(json.dumps(identity).encode(), digest_size=8).hexdigest()
    store_dir = workdir / "data" / f"source-{key}"
    if not (store_dir / "manifest.json").is_file():
        counts = DecodeCounts()
        write_store(store_dir, model_path, {
            split: source_documents(spec, split, counts=counts, **read)
            for split in ("train", "validation")}, source=spec.describe(), counts=counts)
    return prepare_store(workdir, store_dir, seq_len=seq_len, vocab_size=vocab_size)


def _file_stats(spec: SourceSpec) -> list:
    """(path, size, mtime) of a files: source, so edited files make a new store."""
    if spec.kind != "files":
        return []
    return [(str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in resolve_files(spec.patterns)]


def _adopt_tokenizer(model_path: pathlib.Path, tokenizer: Tokenizer) -> None:
    """Copies the store's tokenizer into the workdir; refuses a workdir with another one."""
    if not model_path.exists():
        model_path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(tokenizer.path, model_path)
    elif Tokenizer(model_path).sha256() != tokenizer.sha256():
        raise DataError(f"{model_path} differs from the tokenizer of the data; use a new "
                        "--workdir for this data")


def _pack_store(rows_dir: pathlib.Path, store: TokenStore, tokenizer: Tokenizer,
                seq_len: int) -> None:
    """Packs each split shard by shard (bounded memory) into one PackedRows, atomically."""
    rows_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = pathlib.Path(tempfile.mkdtemp(prefix=f".{rows_dir.name}.tmp-", dir=rows_dir.parent))
    try:
        for split in ("train", "validation"):
            parts = []
            for k, (tokens, offsets) in enumerate(store.shards(split)):
                docs = (tokens[offsets[d]:offsets[d + 1]] for d in range(len(offsets) - 1))
                part = pack_documents(docs, seq_len, cls_id=tokenizer.cls_id,
                                      sep_id=tokenizer.sep_id, pad_id=tokenizer.pad_id)
                part.save(staging / "parts" / f"{split}-{k:05d}")
                parts.append(staging / "parts" / f"{split}-{k:05d}")
            _concatenate(parts, staging / split, seq_len, tokenizer.pad_id)
        shutil.rmtree(staging / "parts", ignore_errors=True)
        try:
            os.rename(staging, rows_dir)
        except OSError:
            if not rows_dir.is_dir():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _concatenate(parts: list[pathlib.Path], out: pathlib.Path, seq_len: int,
                 pad_id: int) -> None:
    """Writes the rows of several packed parts, in order, as one memory-mappable PackedRows."""
    loaded = [PackedRows.load(p) for p in parts]
    total = sum(p.num_rows for p in loaded)
    if total == 0:  # an empty split (no validation documents): nothing to map
        empty = np.zeros((0, seq_len), np.int32)
        PackedRows(empty, empty, empty, pad_id=pad_id).save(out)
        return
    out.mkdir(parents=True)
    for name in ("tokens", "segment_ids", "positions"):
        array = np.lib.format.open_memmap(out / f"{name}.npy", mode="w+", dtype=np.int32,
                                          shape=(total, seq_len))
        start = 0
        for part in loaded:
            array[start:start + part.num_rows] = getattr(part, name)
            start += part.num_rows
        array.flush()
        del array
    meta = {"format": 1, "num_rows": total, "seq_len": seq_len, "pad_id": pad_id}
    (out / "rows.json").write_text(json.dumps(meta), encoding="utf-8")
