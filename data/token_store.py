"""The pre-tokenized store: whole documents as token ids in many small random-access shards.

Layout of a store directory (written by write_store, read by TokenStore):

    manifest.json                 sizes, shard list, per-shard sha256 and a content hash
    tokenizer.model               the tokenizer the ids belong to (or tokenizer.json and
                                  tokenizer_config.json, see data/hf_tokenizer.py)
    <split>/<split>-00000.tokens.npy    every document's ids back to back (uint16 or int32)
    <split>/<split>-00000.offsets.npy   int64 [docs + 1]: document d is tokens[o[d]:o[d+1]]

A shard holds at most `shard_docs` documents and never cuts one. Shards are plain .npy
files rather than array_record: they memory-map, a document is one slice (no per-record
decoding), and the offsets give every length without reading the tokens, which packing
needs. Shards are tokenized in worker processes and the whole store is written into a
temporary folder renamed into place, so an error or an interruption leaves nothing behind.
"""

import collections
import contextlib
import hashlib
import json
import multiprocessing
import os
import pathlib
import shutil
import tempfile
from collections.abc import Iterable, Iterator

import numpy as np

from data.documents import DataError, DecodeCounts
from data.tokenizer import AnyTokenizer, copy_tokenizer, open_tokenizer

FORMAT = 1
MANIFEST = "manifest.json"
SHARD_DOCS = 4096  # records per shard: small shards keep random reads fast
_tokenizer: AnyTokenizer | None = None  # one per worker process


def write_store(out: str | os.PathLike, tokenizer_path: str | os.PathLike,
                splits: dict[str, Iterable[str]], *, source: str, workers: int = 0,
                shard_docs: int = SHARD_DOCS, counts: DecodeCounts | None = None) -> dict:
    """Tokenizes each split's documents into a new store at out; returns its manifest."""
    out = pathlib.Path(out).expanduser()
    if out.exists():
        raise DataError(f"store {out} already exists; choose a new --out or delete it")
    if shard_docs <= 0:
        raise DataError(f"shard_docs must be a positive number of documents, got {shard_docs}")
    tokenizer = open_tokenizer(tokenizer_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = pathlib.Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        copied = copy_tokenizer(tokenizer, staging)
        dtype = np.uint16 if tokenizer.vocab_size <= 1 << 16 else np.int32
        manifest = {"format": FORMAT, "source": source, "token_dtype": np.dtype(dtype).name,
                    "tokenizer": {"file": copied.name, "sha256": tokenizer.sha256(),
                                  "vocab_size": tokenizer.vocab_size}, "splits": {}}
        workers = workers or min(os.cpu_count() or 1, 8)
        with _encoder_pool(tokenizer.path, workers) as pool:
            for split, docs in splits.items():
                (staging / split).mkdir()
                shards = _write_shards(pool, staging, split, docs, dtype, workers, shard_docs)
                manifest["splits"][split] = {
                    "docs": sum(s["docs"] for s in shards),
                    "tokens": sum(s["tokens"] for s in shards), "shards": shards}
        if not manifest["splits"].get("train", {}).get("docs"):
            raise DataError(f"source {source} has no training documents (empty files or "
                            "an empty split)")
        manifest["replaced_invalid_utf8_docs"] = counts.replaced_docs if counts else 0
        manifest["content_hash"] = content_hash(manifest)
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2), encoding="utf-8")
        os.rename(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return manifest


def content_hash(manifest: dict) -> str:
    """A hash of the tokenizer and every shard's bytes: equal hashes mean equal token data."""
    identity = {"tokenizer": manifest["tokenizer"]["sha256"], "dtype": manifest["token_dtype"],
                "splits": {split: [s["sha256"] for s in info["shards"]]
                           for split, info in sorted(manifest["splits"].items())}}
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()


@contextlib.contextmanager
def _encoder_pool(tokenizer_path: pathlib.Path, workers: int):
    """A pool of tokenizer processes, or None to encode in this process (workers <= 1)."""
    if workers <= 1:
        _init_worker(str(tokenizer_path))
        yield None
        return
    context = multiprocessing.get_context("spawn")  # the parent may hold threads: no fork
    with context.Pool(workers, _init_worker, (str(tokenizer_path),)) as pool:
        yield pool


def _write_shards(pool, staging: pathlib.Path, split: str, docs: Iterable[str], dtype,
                  workers: int, shard_docs: int) -> list[dict]:
    """Encodes documents shard by shard, in the pool's processes if any, in order."""
    tasks = ((str(staging), split, k, chunk, np.dtype(dtype).name)
             for k, chunk in enumerate(_chunked(docs, shard_docs)))
    if pool is None:
        return [_encode_shard(task) for task in tasks]
    pending: collections.deque = collections.deque()
    shards = []
    for task in tasks:  # at most 2 shards per worker in flight bounds memory
        pending.append(pool.apply_async(_encode_shard, (task,)))
        if len(pending) >= 2 * workers:
            shards.append(pending.popleft().get())
    shards.extend(p.get() for p in pending)
    return shards


def _chunked(docs: Iterable[str], size: int) -> Iterator[list[str]]:
    """Consecutive lists of up to size documents."""
    chunk = []
    for doc in docs:
        chunk.append(doc)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _init_worker(tokenizer_path: str) -> None:
    """Loads the tokenizer once per worker process."""
    global _tokenizer
    _tokenizer = open_tokenizer(tokenizer_path)


def _encode_shard(task: tuple) -> dict:
    """Encodes one shard's documents and writes its two files; returns its manifest entry."""
    staging, split, index, docs, dtype = task
    ids = _tokenizer.encode_batch(docs)
    lengths = np.array([len(d) for d in ids], np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    tokens = np.fromiter((t for d in ids for t in d), dtype=dtype, count=int(offsets[-1]))
    name = f"{split}/{split}-{index:05d}"
    digest = hashlib.sha256()
    for suffix, array in (("tokens", tokens), ("offsets", offsets)):
        path = pathlib.Path(staging) / f"{name}.{suffix}.npy"
        np.save(path, array, allow_pickle=False)
        digest.update(path.read_bytes())
    return {"name": name, "docs": len(docs), "tokens": int(offsets[-1]),
            "sha256": digest.hexdigest()}


class TokenStore:
    """A store written by write_store, opened read-only with memory-mapped shards."""

    def __init__(self, directory: str | os.PathLike):
        self.directory = pathlib.Path(directory).expanduser()
        path = self.directory / MANIFEST
        if not path.is_file():
            raise DataError(f"no token store at {self.directory}: expected {MANIFEST} written "
                            "by python -m data.prepare_cli")
        try:
            self.manifest = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise DataError(f"{path} is not a store manifest ({e})") from None
        if self.manifest.get("format") != FORMAT:
            raise DataError(f"store {self.directory} has format "
                            f"{self.manifest.get('format')}; this meshlm reads format {FORMAT}")
        self._checked: set[str] = set()  # shards whose sha256 has been checked

    @property
    def tokenizer_path(self) -> pathlib.Path:
        """The tokenizer the ids belong to, kept inside the store."""
        return self.directory / self.manifest["tokenizer"]["file"]

    @property
    def content_hash(self) -> str:
        """The manifest's hash of the tokenizer and all shards."""
        return self.manifest["content_hash"]

    def num_docs(self, split: str) -> int:
        """Documents in a split (0 for a split the store lacks)."""
        return self.manifest["splits"].get(split, {}).get("docs", 0)

    def shards(self, split: str) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(tokens, offsets) of each shard of a split, memory-mapped, in order.

        Each shard is checked against the sha256 its manifest recorded the first time it is
        read (one pass over its two files, which packing reads whole anyway), so a reader
        that stops early, such as `documents(...)` for a few held-out texts, checks only the
        shards it touched.
        """
        for shard in self.manifest["splits"].get(split, {}).get("shards", []):
            base = self.directory / shard["name"]
            if shard["name"] not in self._checked:
                self._check_shard(base, shard)
            try:
                tokens = np.load(f"{base}.tokens.npy", mmap_mode="r" if shard["tokens"] else None,
                                 allow_pickle=False)
                offsets = np.load(f"{base}.offsets.npy", allow_pickle=False)
            except (OSError, ValueError) as e:
                raise DataError(f"store shard {base} cannot be read ({e})") from None
            if len(offsets) != shard["docs"] + 1 or offsets[-1] != len(tokens):
                raise DataError(f"store shard {base} is damaged: its sizes differ from "
                                f"{MANIFEST}")
            yield tokens, offsets

    def _check_shard(self, base: pathlib.Path, shard: dict) -> None:
        """Raises DataError unless the shard's two files hash to the manifest's sha256."""
        digest = hashlib.sha256()
        try:
            for suffix in ("tokens", "offsets"):
                with open(f"{base}.{suffix}.npy", "rb") as f:
                    while chunk := f.read(1 << 20):
                        digest.update(chunk)
        except OSError as e:
            raise DataError(f"store shard {base} cannot be read ({e})") from None
        if digest.hexdigest() != shard["sha256"]:
            raise DataError(f"store shard {base}.{{tokens,offsets}}.npy is damaged: its sha256 "
                            f"differs from the one {self.directory / MANIFEST} recorded when it was "
                            "written; prepare the store again (or delete a workdir's data/ folder "
                            "to rebuild it)")
        self._checked.add(shard["name"])

    def documents(self, split: str) -> Iterator[np.ndarray]:
        """Every document of a split as an array of ids, in store order."""
        for tokens, offsets in self.shards(split):
            for d in range(len(offsets) - 1):
                yield tokens[offsets[d]:offsets[d + 1]]

    def describe(self) -> str:
        """One line of sizes for logs."""
        parts = [f"{split} {info['docs']:,} docs / {info['tokens']:,} tokens in "
                 f"{len(info['shards'])} shards"
                 for split, info in self.manifest["splits"].items()]
        return f"token store {self.directory} ({self.manifest['source']}): " + ", ".join(parts)
