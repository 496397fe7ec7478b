"""What checking the data caches against their recorded hashes costs, at start-up and in the first epoch.

Prepares the demo's data (configs/bert_tiny.py: the built-in corpus, its 4k-piece tokenizer,
rows of 128 tokens) in a workdir once, then, with everything cached, times:

- open: `prepare()` as a training run calls it. It hashes the small files whole (the
  tokenizer, the built-in corpus's text) and reads the rows' block hashes, but reads no rows.
- full hash: what hashing every large cached file at open would cost instead (the packed
  rows and the token store's shards).
- epoch: one pass of step-indexed batches over the training rows, three ways: unchecked (no
  hashes, no range check), checked on first touch (every block is hashed when a batch
  first reads it: the first epoch), and checked again (blocks already checked: every later
  epoch, where only the ids' range check remains).

    ./launch.sh run benchmarks.data_integrity [--workdir=DIR] [--batch_size=32]
"""

from __future__ import annotations

import dataclasses
import pathlib
import tempfile
import time

from absl import app, flags

from data.batches import StepBatches
from data.integrity import file_sha256
from data.packing import PackedRows
from train.config import load_config
from train.inputs import prepare_data

_WORKDIR = flags.DEFINE_string("workdir", "", "Where to prepare the data (default: a temporary folder).")
_BATCH = flags.DEFINE_integer("batch_size", 32, "Rows per batch (the demo's).")


def _best(fn, repeats: int = 3) -> float:
    """The fastest of a few timed calls, in seconds."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return min(times)


def _epoch(rows: PackedRows) -> float:
    batches = StepBatches(rows, _BATCH.value, seed=0)
    started = time.perf_counter()
    for step in range(batches.steps_per_epoch):
        batches.batch(step)
    return time.perf_counter() - started


def main(argv: list[str]) -> None:
    del argv
    config = load_config("configs/bert_tiny.py", [])
    workdir = pathlib.Path(_WORKDIR.value or tempfile.mkdtemp(prefix="meshlm-integrity-"))
    started = time.perf_counter()
    data = prepare_data(config, workdir)
    print(f"prepared {workdir} in {time.perf_counter() - started:.1f}s: {data.describe()}; "
          f"{data.train.num_rows} train rows of {data.train.seq_len}")

    opened = _best(lambda: prepare_data(config, workdir))
    small = [workdir / "tokenizer.model", data.source.train, data.source.validation]
    whole = _best(lambda: [file_sha256(p) for p in small])
    large = sorted(p for p in (workdir / "data").rglob("*.npy"))
    total = sum(p.stat().st_size for p in large)
    full = _best(lambda: [file_sha256(p) for p in large], repeats=2)
    print(f"open (cached): {opened * 1e3:.0f} ms, of which {whole * 1e3:.0f} ms hash the tokenizer and the "
          f"corpus text ({sum(p.stat().st_size for p in small) / 1e6:.1f} MB) whole; hashing every large cached "
          f"file at open would add {full * 1e3:.0f} ms ({len(large)} files, {total / 1e6:.1f} MB, "
          f"{total / 1e6 / full:.0f} MB/s)")

    rows_dir = data.train.directory
    unchecked = dataclasses.replace(PackedRows.load(rows_dir), vocab_size=None, blocks=None)
    plain = min(_epoch(unchecked) for _ in range(2))
    fresh = PackedRows.load(rows_dir)
    first = _epoch(fresh)
    again = min(_epoch(fresh) for _ in range(2))
    steps = StepBatches(fresh, _BATCH.value, seed=0).steps_per_epoch
    print(f"one epoch of {steps} batches of {_BATCH.value}: unchecked {plain * 1e3:.0f} ms, checked on first "
          f"touch {first * 1e3:.0f} ms ({first / plain:.2f}x), checked again {again * 1e3:.0f} ms "
          f"({again / plain:.2f}x); per batch {1e3 * (first - plain) / steps:.2f} ms more in the first epoch, "
          f"{1e3 * (again - plain) / steps:.3f} ms after")


if __name__ == "__main__":
    app.run(main)
