"""Packing tokenized documents into fixed-length rows of [CLS] ... [SEP] segments.

Each row holds several segments; `segment_ids` (1, 2, ... per row, 0 on padding) let the
model keep attention inside a segment and `positions` restart at 0 for each segment. Rows
are filled first-fit over a small window of the most recently opened rows: a segment goes
into the oldest open row of the window with room for it, else into a new row. That wastes
far less padding than next-fit, stays deterministic, and keeps documents near their
neighbours in the corpus.

Saved rows carry, in rows.json, a sha256 per block of rows of each array and the vocabulary
size of the ids: a block is checked the first time a batch reads from it and every batch's
ids are range-checked (data/integrity.py), so a damaged cache stops the run with one line
naming the file instead of feeding the model garbage.
Fine-tuning examples (`pack_examples`) come whole, [CLS] and [SEP] included, each with a
loss mask aligned with its tokens; they pack the same way and are never split.
"""

import dataclasses
import json
import os
import pathlib
import shutil
import tempfile
from collections.abc import Iterable, Sequence

import numpy as np

from data.documents import DataError
from data.integrity import RowBlocks, block_rows, row_block_digests
from data.token_store import TokenStore

# Open rows searched for room; more packs a little tighter and costs a little more time.
PACK_WINDOW = 8
_ARRAYS = ("tokens", "segment_ids", "positions")
LOSS_MASK = "loss_mask"  # fine-tuning rows only: 1 on the tokens the loss covers
_FORMAT = 1


@dataclasses.dataclass
class PackedRows:
    """Packed token rows: tokens, segment_ids and positions, each int32 [num_rows, seq_len].

    Fine-tuning rows also carry `loss_mask` (same shape): 1 where a token is a target.
    """

    tokens: np.ndarray
    segment_ids: np.ndarray
    positions: np.ndarray
    pad_id: int = 0
    vocab_size: int | None = None  # ids must lie in [0, vocab_size); None: not checked
    directory: pathlib.Path | None = None  # where the rows were loaded from, for messages
    blocks: RowBlocks | None = dataclasses.field(default=None, repr=False, compare=False)
    loss_mask: np.ndarray | None = None

    def __post_init__(self):
        shapes = {a.shape for a in (self.tokens, self.segment_ids, self.positions, self.loss_mask)
                  if a is not None}
        if len(shapes) != 1 or self.tokens.ndim != 2:
            raise ValueError(f"tokens, segment_ids, positions (and loss_mask) must share one 2-D shape "
                             f"[num_rows, seq_len], got {sorted(shapes)}")

    @property
    def arrays(self) -> tuple[str, ...]:
        """The names of the arrays these rows hold (and a batch of them has)."""
        return _ARRAYS + ((LOSS_MASK,) if self.loss_mask is not None else ())

    @property
    def num_rows(self) -> int:
        """Number of packed rows."""
        return self.tokens.shape[0]

    @property
    def seq_len(self) -> int:
        """Tokens per row."""
        return self.tokens.shape[1]

    def rows(self, index: np.ndarray) -> dict[str, np.ndarray]:
        """The rows at index as a batch dict {"tokens", "segment_ids", "positions"[, "loss_mask"]}, checked."""
        index = np.asarray(index, dtype=np.int64)
        if self.blocks is not None:
            self.blocks.check(index)
        batch = {name: np.asarray(getattr(self, name)[index], dtype=np.int32) for name in self.arrays}
        if self.vocab_size is not None:
            self._check_ids(batch["tokens"], index)
        return batch

    def _check_ids(self, tokens: np.ndarray, index: np.ndarray) -> None:
        """Raises DataError naming the file when a token id lies outside the vocabulary."""
        bad = (tokens < 0) | (tokens >= self.vocab_size)
        if not bad.any():
            return
        row, column = (int(i[0]) for i in np.nonzero(bad))
        where = f"{self.directory / 'tokens.npy'}" if self.directory else "packed rows"
        raise DataError(f"{where} holds token id {int(tokens[row, column])} in row {int(index[row])}, "
                        f"outside the vocabulary of {self.vocab_size} ids ({int(bad.sum())} such ids "
                        f"in this batch): the packed rows are damaged; {_remedy(self.directory)}")

    def save(self, directory: str | os.PathLike, *, hashed: bool = True) -> None:
        """Writes the arrays as .npy files plus rows.json (with block hashes) into directory."""
        directory = pathlib.Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        for name in self.arrays:
            np.save(directory / f"{name}.npy", np.asarray(getattr(self, name), np.int32),
                    allow_pickle=False)
        _write_meta(directory, self.arrays, self.num_rows, self.seq_len, self.pad_id, self.vocab_size, hashed)

    @classmethod
    def load(cls, directory: str | os.PathLike) -> "PackedRows":
        """Reads rows written by save, memory-mapped so only the rows used are read."""
        directory = pathlib.Path(directory)
        meta_path = directory / "rows.json"
        if not meta_path.is_file():
            raise FileNotFoundError(f"no packed rows at {directory}: expected rows.json and "
                                    f"{', '.join(n + '.npy' for n in _ARRAYS)} written by "
                                    "PackedRows.save")
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
            mmap_mode = "r" if meta["num_rows"] else None  # an empty file cannot be mapped
            names = _ARRAYS + ((LOSS_MASK,) if (directory / f"{LOSS_MASK}.npy").is_file() else ())
            arrays = {name: np.load(directory / f"{name}.npy", mmap_mode=mmap_mode,
                                    allow_pickle=False) for name in names}
        except (ValueError, OSError, KeyError, UnicodeDecodeError) as e:
            raise DataError(f"packed rows at {directory} are damaged ({type(e).__name__}: {e}); "
                            f"{_remedy(directory)}") from None
        rows = cls(**arrays, pad_id=meta["pad_id"], vocab_size=meta.get("vocab_size"), directory=directory)
        if (rows.num_rows, rows.seq_len) != (meta["num_rows"], meta["seq_len"]):
            raise DataError(f"packed rows at {directory} are damaged: rows.json says "
                            f"{meta['num_rows']}x{meta['seq_len']}, arrays are "
                            f"{rows.num_rows}x{rows.seq_len}; {_remedy(directory)}")
        if "sha256" in meta:
            rows.blocks = RowBlocks(directory, arrays, meta["sha256"], meta["block_rows"], _remedy(directory))
        return rows


def is_hashed(directory: str | os.PathLike) -> bool:
    """True when rows.json at directory records block hashes (rows written before that do not)."""
    try:
        return "sha256" in json.loads((pathlib.Path(directory) / "rows.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False


def _write_meta(directory: pathlib.Path, names: tuple[str, ...], num_rows: int, seq_len: int, pad_id: int,
                vocab_size: int | None, hashed: bool) -> None:
    """rows.json, with the sha256 of each block of rows of each array as it lies on disk."""
    meta = {"format": _FORMAT, "num_rows": num_rows, "seq_len": seq_len, "pad_id": pad_id}
    if vocab_size is not None:
        meta["vocab_size"] = vocab_size
    if hashed:
        rows = block_rows(num_rows, seq_len * 4)
        mmap_mode = "r" if num_rows else None
        meta["block_rows"] = rows
        meta["sha256"] = {name: row_block_digests(np.load(directory / f"{name}.npy", mmap_mode=mmap_mode), rows)
                          for name in names}
    (directory / "rows.json").write_text(json.dumps(meta), encoding="utf-8")


def _remedy(directory: pathlib.Path | None) -> str:
    """What to do about damaged rows: they are a cache, so delete them and they are rebuilt."""
    if directory is None:
        return "rebuild them"
    return f"delete {directory.parent} and rerun to rebuild it from the token store"


def pack_documents(docs: Iterable[Sequence[int]], seq_len: int, *, cls_id: int, sep_id: int,
                   pad_id: int = 0) -> PackedRows:
    """Packs token documents as [CLS] tokens [SEP] segments into rows of seq_len tokens."""
    if seq_len < 4:
        raise ValueError(f"seq_len must be at least 4 ([CLS], a token, [SEP] and room), "
                         f"got {seq_len}")
    chunks = _chunks(docs, seq_len - 2)
    lengths = np.array([len(c) + 2 for c in chunks], dtype=np.int64)
    row, offset, index_in_row, num_rows = _place(lengths.tolist(), seq_len)
    shape = (num_rows, seq_len)
    tokens = np.full(shape, pad_id, np.int32)
    segment_ids = np.zeros(shape, np.int32)
    positions = np.zeros(shape, np.int32)
    if chunks:
        stream, stream_positions = _segment_stream(chunks, lengths, cls_id, sep_id)
        destination = np.repeat(row * seq_len + offset, lengths) + stream_positions
        tokens.reshape(-1)[destination] = stream
        segment_ids.reshape(-1)[destination] = np.repeat(index_in_row + 1, lengths)
        positions.reshape(-1)[destination] = stream_positions
    return PackedRows(tokens, segment_ids, positions, pad_id=pad_id)


def pack_examples(examples: Sequence[tuple[np.ndarray, np.ndarray]], seq_len: int, *,
                  pad_id: int = 0) -> PackedRows:
    """Packs whole (tokens, loss mask) examples, each at most seq_len long, into rows with a loss_mask."""
    lengths = [len(ids) for ids, _ in examples]
    if any(n < 1 or n > seq_len for n in lengths):
        raise ValueError(f"every example must hold 1..{seq_len} tokens, got lengths {min(lengths)}..{max(lengths)}; "
                         "truncate them first")
    row, offset, index_in_row, num_rows = _place(lengths, seq_len)
    shape = (num_rows, seq_len)
    tokens = np.full(shape, pad_id, np.int32)
    segment_ids, positions, loss_mask = (np.zeros(shape, np.int32) for _ in range(3))
    for (ids, mask), r, o, k in zip(examples, row, offset, index_in_row):
        span = slice(int(o), int(o) + len(ids))
        tokens[r, span], loss_mask[r, span] = ids, mask
        segment_ids[r, span] = k + 1
        positions[r, span] = np.arange(len(ids))
    return PackedRows(tokens, segment_ids, positions, pad_id=pad_id, loss_mask=loss_mask)


def _chunks(docs: Iterable[Sequence[int]], max_len: int) -> list[np.ndarray]:
    """Non-empty documents cut into consecutive int32 pieces of at most max_len tokens."""
    chunks = []
    for doc in docs:
        ids = np.asarray(doc, dtype=np.int32).reshape(-1)
        chunks.extend(ids[i:i + max_len] for i in range(0, len(ids), max_len))
    return chunks


def _place(lengths: list[int], seq_len: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """First-fit over the last PACK_WINDOW open rows: each segment's row, offset and slot."""
    row, offset, index_in_row = (np.zeros(len(lengths), np.int64) for _ in range(3))
    used: list[int] = []  # tokens used per row
    count: list[int] = []  # segments per row
    window: list[int] = []  # open rows, oldest first
    for i, length in enumerate(lengths):
        target = next((r for r in window if used[r] + length <= seq_len), None)
        if target is None:
            target = len(used)
            used.append(0)
            count.append(0)
            window.append(target)
            if len(window) > PACK_WINDOW:
                window.pop(0)
        row[i], offset[i], index_in_row[i] = target, used[target], count[target]
        used[target] += length
        count[target] += 1
        if used[target] > seq_len - 3:  # no room left even for [CLS] x [SEP]
            window.remove(target)
    return row, offset, index_in_row, len(used)


def _segment_stream(chunks: list[np.ndarray], lengths: np.ndarray, cls_id: int,
                    sep_id: int) -> tuple[np.ndarray, np.ndarray]:
    """All segments back to back as [CLS] chunk [SEP], with each token's position in its segment."""
    total = int(lengths.sum())
    starts = np.cumsum(lengths) - lengths
    stream = np.empty(total, np.int32)
    is_content = np.ones(total, bool)
    is_content[starts] = is_content[starts + lengths - 1] = False
    stream[is_content] = np.concatenate(chunks)
    stream[starts] = cls_id
    stream[starts + lengths - 1] = sep_id
    return stream, np.arange(total) - np.repeat(starts, lengths)


def pack_store(rows_dir: pathlib.Path, store: TokenStore, seq_len: int, *, cls_id: int, sep_id: int,
               pad_id: int, vocab_size: int | None = None) -> None:
    """Packs each split shard by shard (bounded memory) into one PackedRows, atomically."""
    rows_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = pathlib.Path(tempfile.mkdtemp(prefix=f".{rows_dir.name}.tmp-", dir=rows_dir.parent))
    try:
        for split in ("train", "validation"):
            parts = []
            for k, (tokens, offsets) in enumerate(store.shards(split)):
                docs = (tokens[offsets[d]:offsets[d + 1]] for d in range(len(offsets) - 1))
                part = pack_documents(docs, seq_len, cls_id=cls_id,
                                      sep_id=sep_id, pad_id=pad_id)
                part.save(staging / "parts" / f"{split}-{k:05d}", hashed=False)
                parts.append(staging / "parts" / f"{split}-{k:05d}")
            _concatenate(parts, staging / split, seq_len, pad_id, vocab_size)
        shutil.rmtree(staging / "parts", ignore_errors=True)
        try:
            os.rename(staging, rows_dir)
        except OSError:
            if not rows_dir.is_dir():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _concatenate(parts: list[pathlib.Path], out: pathlib.Path, seq_len: int,
                 pad_id: int, vocab_size: int | None) -> None:
    """Writes the rows of several packed parts, in order, as one memory-mappable PackedRows."""
    loaded = [PackedRows.load(p) for p in parts]
    total = sum(p.num_rows for p in loaded)
    if total == 0:  # an empty split (no validation documents): nothing to map
        empty = np.zeros((0, seq_len), np.int32)
        PackedRows(empty, empty, empty, pad_id=pad_id, vocab_size=vocab_size).save(out)
        return
    out.mkdir(parents=True)
    for name in _ARRAYS:
        array = np.lib.format.open_memmap(out / f"{name}.npy", mode="w+", dtype=np.int32,
                                          shape=(total, seq_len))
        start = 0
        for part in loaded:
            array[start:start + part.num_rows] = getattr(part, name)
            start += part.num_rows
        array.flush()
        del array
    _write_meta(out, _ARRAYS, total, seq_len, pad_id, vocab_size, hashed=True)
