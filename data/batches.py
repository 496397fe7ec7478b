"""Step-indexed batches: the rows of global batch `step` are a pure function of (seed, step).

Epoch e visits the rows in the order `np.random.default_rng([seed, e]).permutation(n)`; the
epochs placed end to end form one stream, and global batch s is stream positions
[s*B, (s+1)*B), so a batch may straddle two (or, for B > n, more) epochs. There is no
iterator state: resuming needs only the step, and a change of process count changes only
which block of a global batch each process reads.
"""

import functools
from collections.abc import Iterator

import numpy as np

from data.packing import PackedRows


class StepBatches:
    """Training batches of packed rows, addressed by step and process."""

    def __init__(self, rows: PackedRows, global_batch_size: int, seed: int):
        if rows.num_rows == 0:
            raise ValueError("no packed rows to batch: the training data is empty")
        if global_batch_size <= 0:
            raise ValueError(f"global_batch_size must be a positive number of rows, "
                             f"got {global_batch_size}")
        if seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {seed}")
        self._rows = rows
        self._batch_size = global_batch_size
        self._seed = seed

    @property
    def steps_per_epoch(self) -> int:
        """Global batches per pass over the rows, at least 1 (the last may straddle)."""
        return max(1, -(-self._rows.num_rows // self._batch_size))

    def global_indices(self, step: int) -> np.ndarray:
        """Row ids of global batch `step`, in batch order."""
        return self._stream(step * self._batch_size, self._batch_size, step)

    def batch(self, step: int, process_index: int = 0,
              process_count: int = 1) -> dict[str, np.ndarray]:
        """This process's contiguous block of global batch `step`: B/process_count rows."""
        if process_count <= 0 or not 0 <= process_index < process_count:
            raise ValueError(f"process_index must be in [0, process_count), got "
                             f"process_index={process_index}, process_count={process_count}")
        if self._batch_size % process_count:
            raise ValueError(f"global_batch_size {self._batch_size} does not divide by "
                             f"process_count {process_count}: use a multiple of it")
        local = self._batch_size // process_count
        start = step * self._batch_size + process_index * local
        return self._rows.rows(self._stream(start, local, step))

    def _stream(self, start: int, count: int, step: int) -> np.ndarray:
        """Row ids at stream positions [start, start + count)."""
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        n = self._rows.num_rows
        position = np.arange(start, start + count, dtype=np.int64)
        epoch, offset = np.divmod(position, n)
        index = np.empty(count, np.int64)
        for e in np.unique(epoch):
            chosen = epoch == e
            index[chosen] = _epoch_order(self._seed, int(e), n)[offset[chosen]]
        return index


@functools.lru_cache(maxsize=4)
def _epoch_order(seed: int, epoch: int, num_rows: int) -> np.ndarray:
    """The row order of one epoch; cached because consecutive steps share an epoch."""
    order = np.random.default_rng([seed, epoch]).permutation(num_rows)
    order.flags.writeable = False
    return order


def eval_batches(rows: PackedRows, batch_size: int,
                 max_batches: int | None = None) -> Iterator[dict[str, np.ndarray]]:
    """Evaluation rows in order, in fixed-size batches; the last is padded with empty rows."""
    if batch_size <= 0:
        raise ValueError(f"batch_size must be a positive number of rows, got {batch_size}")
    num_batches = -(-rows.num_rows // batch_size)
    if max_batches is not None:
        num_batches = min(num_batches, max_batches)
    return (_eval_batch(rows, b * batch_size, batch_size) for b in range(num_batches))


def _eval_batch(rows: PackedRows, start: int, batch_size: int) -> dict[str, np.ndarray]:
    """Rows [start, start + batch_size), padded past the end with all-pad rows."""
    batch = rows.rows(np.arange(start, min(start + batch_size, rows.num_rows)))
    missing = batch_size - len(batch["tokens"])
    if not missing:
        return batch
    return {name: np.pad(array, ((0, missing), (0, 0)),
                         constant_values=rows.pad_id if name == "tokens" else 0)
            for name, array in batch.items()}
