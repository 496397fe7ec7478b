"""Hashes recorded when meshlm writes a file, checked when it reads the file back.

Small files (a tokenizer, the built-in corpus's text, one store shard) are hashed whole
when they are opened or first read. Packed rows can be gigabytes, so they are hashed in
blocks of rows: `RowBlocks` checks a block the first time a batch reads from it. Start-up
then reads nothing extra, the cost is one pass over the rows spread over the first epoch
(in the prefetch threads), and every row that reaches a step has been checked once.
"""

import hashlib
import os
import pathlib
import threading

import numpy as np

from data.documents import DataError

_CHUNK = 1 << 20
ROW_BLOCK_BYTES = 1 << 20  # bytes per array per block: ~1.5 ms of sha256 here, paid once
MAX_ROW_BLOCKS = 8192  # keeps rows.json small: larger arrays get larger blocks


def file_sha256(path: str | os.PathLike) -> str:
    """The sha256 of a file's bytes, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def record_path(path: str | os.PathLike) -> pathlib.Path:
    """Where a small file's sha256 is recorded: FILE.sha256, in `sha256sum` format."""
    path = pathlib.Path(path)
    return path.with_name(path.name + ".sha256")


def record_sha256(path: str | os.PathLike, digest: str | None = None) -> str:
    """Writes FILE.sha256 next to a file meshlm has just written; returns the digest."""
    path = pathlib.Path(path)
    digest = digest or file_sha256(path)
    record = record_path(path)
    staging = record.with_name(f".{record.name}.tmp-{os.getpid()}")
    staging.write_text(f"{digest}  {path.name}\n", encoding="utf-8")
    os.replace(staging, record)  # `sha256sum -c FILE.sha256` checks it by hand
    return digest


def check_recorded_sha256(path: str | os.PathLike, digest: str, what: str = "") -> None:
    """Raises DataError when FILE.sha256 exists and records another digest than `digest`."""
    path = pathlib.Path(path)
    record = record_path(path)
    try:
        recorded = record.read_text(encoding="utf-8").split()[0]
    except FileNotFoundError:
        return  # not written by meshlm (or by one that recorded nothing): nothing to compare
    except (OSError, UnicodeDecodeError, IndexError):
        raise DataError(f"{record} is unreadable; delete it if {path} is intact") from None
    if recorded != digest:
        raise DataError(f"{path} has changed since it was written (sha256 {digest[:12]}..., but "
                        f"{recorded[:12]}... recorded in {record.name}): it is damaged or was replaced"
                        f"{'; ' + what if what else ''}")


def block_rows(num_rows: int, row_bytes: int) -> int:
    """Rows per hashed block of an array whose rows are row_bytes long."""
    rows = max(1, ROW_BLOCK_BYTES // max(row_bytes, 1))
    return max(rows, -(-num_rows // MAX_ROW_BLOCKS))


def row_block_digests(array: np.ndarray, rows_per_block: int) -> list[str]:
    """sha256 of each block of rows of a C-ordered array, over the bytes as stored."""
    return [_block_digest(array, start, rows_per_block) for start in range(0, len(array), rows_per_block)]


def _block_digest(array: np.ndarray, start: int, rows: int) -> str:
    return hashlib.sha256(memoryview(np.ascontiguousarray(array[start:start + rows])).cast("B")).hexdigest()


class RowBlocks:
    """Checks blocks of rows of several same-shaped arrays against recorded digests, once each."""

    def __init__(self, directory: pathlib.Path, arrays: dict[str, np.ndarray],
                 digests: dict[str, list[str]], rows_per_block: int, remedy: str):
        num_rows = len(next(iter(arrays.values())))
        num_blocks = -(-num_rows // rows_per_block)
        for name, listed in digests.items():
            if len(listed) != num_blocks:
                raise DataError(f"{directory / 'rows.json'} is damaged: it lists {len(listed)} "
                                f"block hashes for {name}.npy, expected {num_blocks}; {remedy}")
        self._directory = directory
        self._arrays = arrays
        self._digests = digests
        self._rows = rows_per_block
        self._remedy = remedy
        self._checked = np.zeros(num_blocks, bool)
        self._lock = threading.Lock()

    @property
    def checked_fraction(self) -> float:
        """How much of the rows has been checked so far."""
        return float(self._checked.mean()) if self._checked.size else 1.0

    def check(self, index: np.ndarray) -> None:
        """Checks every not-yet-checked block that holds one of the rows at index."""
        blocks = np.unique(np.asarray(index, np.int64) // self._rows)
        for block in blocks[~self._checked[blocks]]:
            self._check_block(int(block))

    def check_all(self) -> None:
        """Checks every block now (a full pass over the rows)."""
        self.check(np.arange(0, len(self._checked) * self._rows, self._rows))

    def _check_block(self, block: int) -> None:
        start = block * self._rows
        for name, array in self._arrays.items():
            if _block_digest(array, start, self._rows) != self._digests[name][block]:
                end = min(start + self._rows, len(array))
                raise DataError(f"{self._directory / name}.npy is damaged: rows {start}-{end - 1} "
                                "differ from the sha256 recorded when they were written; "
                                f"{self._remedy}")
        with self._lock:
            self._checked[block] = True
