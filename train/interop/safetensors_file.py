"""safetensors files written and read one tensor at a time, so host memory stays near one tensor.

The format is an 8-byte little-endian header length, a JSON header (name -> dtype, shape,
byte offsets; plus `__metadata__`), then the raw bytes. Every shape is known before any
value is read, so the header goes first and each tensor is streamed after it; the
`safetensors` library itself needs the whole dict in memory. bfloat16 comes from
ml_dtypes (a jax dependency), which plain numpy lacks.
"""

from __future__ import annotations

import json
import pathlib
import struct
from typing import Iterable, Iterator

import ml_dtypes
import numpy as np

_DTYPES = {
    "F64": np.dtype(np.float64), "F32": np.dtype(np.float32), "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16), "I64": np.dtype(np.int64), "I32": np.dtype(np.int32),
    "I16": np.dtype(np.int16), "I8": np.dtype(np.int8), "U8": np.dtype(np.uint8),
    "BOOL": np.dtype(np.bool_),
}
_NAMES = {dtype: name for name, dtype in _DTYPES.items()}

TensorSpec = tuple[str, tuple[int, ...], np.dtype]  # name, shape, dtype


def write_safetensors(path: str | pathlib.Path, specs: list[TensorSpec], arrays: Iterable[np.ndarray],
                      metadata: dict[str, str] | None = None) -> None:
    """Writes `arrays` (one per spec, in order, produced lazily) after a header built from `specs`."""
    header: dict[str, object] = {"__metadata__": dict(metadata or {})}
    offset = 0
    for name, shape, dtype in specs:
        size = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
        header[name] = {"dtype": _NAMES[np.dtype(dtype)], "shape": list(shape),
                        "data_offsets": [offset, offset + size]}
        offset += size
    encoded = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)  # the reference writer aligns the data to 8 bytes
    written = 0
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(encoded)))
        f.write(encoded)
        for (name, shape, dtype), array in zip(specs, arrays, strict=True):
            array = np.asarray(array)
            if array.shape != tuple(shape) or array.dtype != np.dtype(dtype):
                raise ValueError(f"tensor {name} is {array.dtype}{list(array.shape)}, "
                                 f"declared {np.dtype(dtype)}{list(shape)}")
            f.write(np.ascontiguousarray(array).reshape(-1).view(np.uint8))  # no copy; little-endian hosts
            written += array.nbytes
    if written != offset:
        raise ValueError(f"wrote {written} bytes of tensor data to {path}, the header declares {offset}")


class SafetensorsReader:
    """Random access to the tensors of one safetensors file, each read on demand."""

    def __init__(self, path: str | pathlib.Path):
        self.path = pathlib.Path(path)
        with open(self.path, "rb") as f:
            (length,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(length))
        self.metadata: dict[str, str] = header.pop("__metadata__", {}) or {}
        self._entries = header
        self._data_start = 8 + length
        for name, entry in header.items():
            if entry["dtype"] not in _DTYPES:
                raise ValueError(f"{self.path}: tensor {name} has dtype {entry['dtype']}; "
                                 f"accepted: {', '.join(_DTYPES)}")

    def names(self) -> list[str]:
        return list(self._entries)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._entries[name]["shape"])

    def dtype(self, name: str) -> np.dtype:
        return _DTYPES[self._entries[name]["dtype"]]

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def read(self, name: str) -> np.ndarray:
        """One tensor as a fresh numpy array (only its bytes are read from disk)."""
        entry = self._entries[name]
        start, end = entry["data_offsets"]
        with open(self.path, "rb") as f:
            f.seek(self._data_start + start)
            raw = f.read(end - start)
        return np.frombuffer(raw, dtype=self.dtype(name)).reshape(entry["shape"]).copy()

    def items(self) -> Iterator[tuple[str, np.ndarray]]:
        for name in self._entries:
            yield name, self.read(name)


INDEX_FILE = "model.safetensors.index.json"


class ShardedSafetensors:
    """The tensors of a checkpoint split over several files (Transformers' save_pretrained of a
    large model), found through model.safetensors.index.json; read as one SafetensorsReader."""

    def __init__(self, index_path: str | pathlib.Path):
        index_path = pathlib.Path(index_path)
        try:
            weight_map = json.loads(index_path.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise ValueError(f"{index_path} is not a safetensors index (a JSON object with a weight_map): {e}") from None
        missing = sorted({f for f in weight_map.values() if not (index_path.parent / f).is_file()})
        if missing:
            raise ValueError(f"{index_path} names shard(s) that are not in {index_path.parent}: {', '.join(missing)}")
        files = {f: SafetensorsReader(index_path.parent / f) for f in sorted(set(weight_map.values()))}
        self.path = index_path
        self.metadata = next(iter(files.values())).metadata if files else {}
        self._where = {name: files[f] for name, f in weight_map.items() if name in files[f]}

    def names(self) -> list[str]:
        return list(self._where)

    def shape(self, name: str) -> tuple[int, ...]:
        return self._where[name].shape(name)

    def dtype(self, name: str) -> np.dtype:
        return self._where[name].dtype(name)

    def __contains__(self, name: str) -> bool:
        return name in self._where

    def read(self, name: str) -> np.ndarray:
        return self._where[name].read(name)

    def items(self) -> Iterator[tuple[str, np.ndarray]]:
        for name in self._where:
            yield name, self.read(name)


def open_checkpoint_weights(folder: str | pathlib.Path) -> SafetensorsReader | ShardedSafetensors | None:
    """A Transformers folder's weights: model.safetensors, or the shards its index names; None if neither."""
    folder = pathlib.Path(folder)
    if (folder / "model.safetensors").is_file():
        return SafetensorsReader(folder / "model.safetensors")
    if (folder / INDEX_FILE).is_file():
        return ShardedSafetensors(folder / INDEX_FILE)
    return None
