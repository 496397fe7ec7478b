"""The one path from a source string to packed rows: documents -> tokenizer -> token store -> rows.

    prepare(workdir, source, ...)
      1. the tokenizer: workdir/tokenizer.model, trained on the source's train documents once
         (or the workdir's tokenizer.json, which an imported model brought)
      2. the token store: `store:<dir>` as given; any text source tokenized into
         workdir/data/source-<key>/ by tokenize_to_store (data/token_store.py)
      3. the packed rows: workdir/data/<key>/{train,validation} (data/packing.py)

A workdir in a bucket (`gs://...`) keeps its tokenizer there, but the token store and rows
are memory-mapped, so they are made in the workdir's local mirror under the cache
(data/remote.py); each host of a pod makes its own. A `store:gs://...` store is copied
to the cache once (keyed by its content hash) and read there.

Each step is made once and reused; each is written to a temporary folder and renamed into
place, so an interrupted run never leaves half of one. Each records hashes of what it
wrote (the tokenizer's FILE.sha256, the store's per-shard sha256, the rows' per-block
sha256) and is checked against them when read back (data/integrity.py). `python -m data.prepare_cli` runs
step 2 alone for large data (prepare once, train many).

The built-in corpus is tokenized into a single-shard store: its documents then pack as one
stream, into the same rows (and the same cache key) as before stores existed, so workdirs
and checkpoints made then still resume.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pathlib
import shutil

from data import remote
from data.builtin_corpus import CorpusFiles, builtin_corpus, default_cache_dir, read_documents
from data.documents import SPLITS, DataError, DecodeCounts
from data.packing import PACK_WINDOW, PackedRows, is_hashed, pack_store
from data.sources import SourceSpec, parse_source, source_documents
from data.token_store import MANIFEST, SHARD_DOCS, TokenStore, write_store
from data.sentencepiece_training import load_or_train_tokenizer, train_tokenizer_on_documents
from data.tokenizer import (SPM_FILE, AnyTokenizer, copy_tokenizer, fits_vocab, open_tokenizer, pull_tokenizer,
                            push_tokenizer, tokenizer_file)

# Bump when packing changes, so old rows are not reused.
STORE_VERSION = 1


@dataclasses.dataclass
class PreparedData:
    """What training needs from the data side: the tokenizer and packed rows per split."""

    tokenizer: AnyTokenizer
    train: PackedRows
    validation: PackedRows
    source: CorpusFiles | TokenStore  # the built-in corpus's text files, or the store packed
    key: str  # names the tokenizer, documents and packing: equal keys mean equal rows

    def describe(self) -> str:
        """One line saying what the rows were made from, for logs."""
        return self.source.describe()

    def validation_documents(self, limit: int = 2000) -> list[str]:
        """Held-out documents as text: the built-in file's, or limit decoded from the store."""
        if isinstance(self.source, CorpusFiles):
            return read_documents(self.source.validation)
        docs = self.source.documents("validation")
        return [self.tokenizer.decode(ids) for ids, _ in zip(docs, range(limit))]


def prepare(workdir: str | os.PathLike, source: str | SourceSpec, *, seq_len: int, vocab_size: int,
            tokenizer_type: str = "unigram", text_field: str = "text", tfds_data_dir: str = "",
            cache_dir: str | os.PathLike = "", max_corpus_bytes: int | None = None) -> PreparedData:
    """The tokenizer, token store and packed rows of source for workdir (made once, then reused)."""
    if seq_len < 4:
        raise ValueError(f"seq_len must be at least 4, got {seq_len}")
    spec = parse_source(source) if isinstance(source, str) else source
    cache_dir = cache_dir or default_cache_dir()
    if remote.is_url(workdir):  # the tokenizer in the bucket; the caches in its local mirror
        bucket, mirror = remote.as_path(workdir), remote.local_mirror(workdir, cache_dir)
        pull_tokenizer(bucket, mirror)
        prepared = prepare(mirror, spec, seq_len=seq_len, vocab_size=vocab_size, tokenizer_type=tokenizer_type,
                           text_field=text_field, tfds_data_dir=tfds_data_dir, cache_dir=cache_dir,
                           max_corpus_bytes=max_corpus_bytes)
        push_tokenizer(mirror, bucket)
        return prepared
    workdir = pathlib.Path(workdir)
    corpus = builtin_corpus(cache_dir, max_corpus_bytes) if spec.kind == "builtin" else None
    read = dict(text_field=text_field, tfds_data_dir=tfds_data_dir, builtin_dir=cache_dir,
                max_corpus_bytes=max_corpus_bytes)
    if spec.kind == "store":
        store = _open_store(spec.path, vocab_size, cache_dir)
        tokenizer = _adopt_tokenizer(workdir, store)
    else:
        model_path = tokenizer_file(workdir) or workdir / SPM_FILE
        tokenizer = _source_tokenizer(model_path, spec, corpus, vocab_size, tokenizer_type, read)
        store = None if corpus else _workdir_store(workdir, spec, None, tokenizer, read)
    key = _rows_key(store, corpus, tokenizer, seq_len)
    rows_dir = workdir / "data" / key
    if rows_dir.is_dir() and not all(is_hashed(rows_dir / split) for split in SPLITS):
        _discard(rows_dir)  # packed before rows recorded their hashes: pack again, same rows
    if not rows_dir.is_dir():
        # The built-in corpus's key names its text, not a store: tokenize it only when packing.
        store = store or _workdir_store(workdir, spec, corpus, tokenizer, read)
        pack_store(rows_dir, store, seq_len, cls_id=tokenizer.cls_id, sep_id=tokenizer.sep_id,
                   pad_id=tokenizer.pad_id, vocab_size=tokenizer.vocab_size)
    return PreparedData(tokenizer=tokenizer, train=PackedRows.load(rows_dir / "train"),
                        validation=PackedRows.load(rows_dir / "validation"), source=corpus or store,
                        key=key)


def tokenize_to_store(source: str | SourceSpec, tokenizer: str | os.PathLike, out: str | os.PathLike, *,
                      vocab_size: int = 0, tokenizer_type: str = "unigram", text_field: str = "text",
                      tfds_data_dir: str = "", workers: int = 0, shard_docs: int = SHARD_DOCS,
                      builtin_dir: str | os.PathLike = "") -> dict:
    """Tokenizes a text source into a new store at out (training the tokenizer first if asked)."""
    spec = parse_source(source) if isinstance(source, str) else source
    if spec.kind == "store":
        raise DataError(f"--source={spec.describe()} is already a token store; give a text source")
    if not tokenizer or not out:
        raise DataError("--tokenizer and --out are required")
    if (remote.as_path(out) if remote.is_url(out) else pathlib.Path(out).expanduser()).exists():
        raise DataError(f"store {out} already exists; choose a new --out or delete it")
    if remote.is_url(out):  # written on local disk, then uploaded with its manifest last
        staging = remote.local_mirror(out, builtin_dir or default_cache_dir())
        remote.remove_tree(staging)
        manifest = tokenize_to_store(spec, tokenizer, staging, vocab_size=vocab_size, tokenizer_type=tokenizer_type,
                                     text_field=text_field, tfds_data_dir=tfds_data_dir, workers=workers,
                                     shard_docs=shard_docs, builtin_dir=builtin_dir)
        upload_store(staging, remote.as_path(out))
        return manifest
    builtin_dir = builtin_dir or default_cache_dir()
    read = dict(text_field=text_field, tfds_data_dir=tfds_data_dir, builtin_dir=builtin_dir)
    if not pathlib.Path(tokenizer).exists():
        if vocab_size <= 0 or str(tokenizer).endswith(".json"):
            raise DataError(f"no tokenizer at {tokenizer}: give an existing .model or tokenizer.json, or "
                            "a .model path and --vocab_size=N to train one on the source")
        train_tokenizer_on_documents(source_documents(spec, "train", **read), tokenizer,
                                     vocab_size=vocab_size, model_type=tokenizer_type)
    elif vocab_size and open_tokenizer(tokenizer).vocab_size != vocab_size:
        raise DataError(f"tokenizer {tokenizer} has {open_tokenizer(tokenizer).vocab_size} pieces, "
                        f"not --vocab_size={vocab_size}; drop --vocab_size or use another path")
    return _write_source_store(out, spec, tokenizer, read, workers=workers, shard_docs=shard_docs)


def upload_store(local: pathlib.Path, target: remote.AnyPath) -> None:
    """Copies a local store into a bucket folder; the manifest last, so a half copy is no store."""
    for path in sorted(local.rglob("*")):
        if path.is_file() and path.name != MANIFEST:
            remote.upload(path, target / path.relative_to(local).as_posix())
    remote.upload(local / MANIFEST, target / MANIFEST)


def _write_source_store(out, spec: SourceSpec, tokenizer_path, read: dict, **options) -> dict:
    """Both splits of a text source, tokenized into a new store at out."""
    counts = DecodeCounts()
    splits = {split: source_documents(spec, split, counts=counts, **read) for split in SPLITS}
    return write_store(out, tokenizer_path, splits, source=spec.describe(), counts=counts, **options)


def _source_tokenizer(model_path: pathlib.Path, spec: SourceSpec, corpus: CorpusFiles | None,
                      vocab_size: int, model_type: str, read: dict) -> AnyTokenizer:
    """The workdir's tokenizer, trained on the source's train documents if there is none yet."""
    if model_path.exists() or corpus is not None:
        return load_or_train_tokenizer(model_path, corpus.train if corpus else "", vocab_size=vocab_size,
                                       model_type=model_type)
    return train_tokenizer_on_documents(source_documents(spec, "train", **read), model_path,
                                        vocab_size=vocab_size, model_type=model_type)


def _workdir_store(workdir: pathlib.Path, spec: SourceSpec, corpus: CorpusFiles | None,
                   tokenizer: AnyTokenizer, read: dict) -> TokenStore:
    """A text source's token store under workdir/data/source-<key>/, written once."""
    identity = {"source": spec.describe(), "text_field": read["text_field"],
                "tfds_data_dir": read["tfds_data_dir"], "tokenizer": tokenizer.sha256(),
                "files": _file_stats(spec), "version": STORE_VERSION}
    if corpus is not None:  # the cache folder's name keys the corpus build
        identity.update(text_field="", tfds_data_dir="", corpus=corpus.train.parent.name)
    key = hashlib.blake2b(json.dumps(identity).encode(), digest_size=8).hexdigest()
    store_dir = workdir / "data" / f"source-{key}"
    if not (store_dir / "manifest.json").is_file():
        # One shard for the built-in corpus: its rows then equal those packed before stores existed.
        one_shard = dict(shard_docs=max(corpus.train_docs, corpus.validation_docs, 1), workers=1) if corpus else {}
        _write_source_store(store_dir, spec, tokenizer.path, read, **one_shard)
    return TokenStore(store_dir)


def _open_store(path: str, vocab_size: int, cache_dir: str | os.PathLike) -> TokenStore:
    """A store made by data.prepare_cli, checked against its manifest and the model's vocabulary."""
    store = TokenStore(local_store(path, cache_dir))
    tokenizer = open_tokenizer(store.tokenizer_path)
    if tokenizer.sha256() != store.manifest["tokenizer"]["sha256"]:
        raise DataError(f"{store.tokenizer_path} is not the tokenizer recorded in the store's "
                        "manifest: the store is damaged; prepare it again")
    if not fits_vocab(tokenizer, vocab_size):
        raise DataError(f"store {store.directory} was tokenized with {tokenizer.vocab_size} "
                        f"pieces but model.vocab_size={vocab_size}; set "
                        f"--config.model.vocab_size={tokenizer.vocab_size}")
    return store


def local_store(path: str, cache_dir: str | os.PathLike = "") -> str:
    """A store's local folder: itself, or for a bucket's store its copy in the cache (made once)."""
    if not remote.is_url(path):
        return path
    url = remote.as_path(path)
    try:
        manifest = json.loads((url / MANIFEST).read_text(encoding="utf-8"))
        content = manifest["content_hash"]
    except FileNotFoundError:
        raise DataError(f"store {path} has no {MANIFEST}: give a folder written by data.prepare_cli") from None
    except (ValueError, KeyError, TypeError):
        raise DataError(f"store {path} has a damaged {MANIFEST}; prepare it again") from None
    mirror = remote.local_mirror(path, cache_dir or default_cache_dir())
    return str(remote.download_tree(url, mirror.with_name(f"{mirror.name}-{content[:16]}"), last=MANIFEST))


def _adopt_tokenizer(workdir: pathlib.Path, store: TokenStore) -> AnyTokenizer:
    """Copies the store's tokenizer into the workdir; refuses a workdir with another one."""
    tokenizer = open_tokenizer(store.tokenizer_path)
    existing = tokenizer_file(workdir)
    if existing is None:
        copy_tokenizer(tokenizer, workdir)
    elif open_tokenizer(existing).sha256() != tokenizer.sha256():
        raise DataError(f"{existing} differs from the tokenizer of the data; use a new "
                        "--workdir for this data")
    return tokenizer


def _discard(directory: pathlib.Path) -> None:
    """Removes a cache folder: renamed out of the way first, so no reader sees half of it."""
    doomed = directory.with_name(f".{directory.name}.old-{os.getpid()}")
    try:
        os.rename(directory, doomed)
    except FileNotFoundError:
        return  # another process of the job got there first
    shutil.rmtree(doomed, ignore_errors=True)


def _rows_key(store: TokenStore | None, corpus: CorpusFiles | None, tokenizer: AnyTokenizer, seq_len: int) -> str:
    """A short hash of everything that decides the packed rows."""
    if corpus is not None:  # the built-in corpus keeps the key its rows had before stores
        identity = {"tokenizer": tokenizer.sha256(), "corpus": corpus.train.parent.name,
                    "sizes": [corpus.train_bytes, corpus.validation_bytes, corpus.train_docs,
                              corpus.validation_docs],
                    "seq_len": seq_len, "window": PACK_WINDOW, "version": STORE_VERSION}
    else:
        identity = {"store": store.content_hash, "seq_len": seq_len, "window": PACK_WINDOW,
                    "version": STORE_VERSION}
    return hashlib.blake2b(json.dumps(identity).encode(), digest_size=8).hexdigest()


def _file_stats(spec: SourceSpec) -> list:
    """(path, size, mtime) of a files: source, so edited files make a new store."""
    if spec.kind != "files":
        return []
    from data.text_files import resolve_files

    return [(str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in resolve_files(spec.patterns)]
