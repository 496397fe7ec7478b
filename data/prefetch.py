"""Background prefetch of step-indexed batches, so the host never waits on the data.

A batch is a pure function of its step (data/batches.py), so prefetching is only
computing steps ahead: worker threads fill batches start, start+1, ... while the
consumer takes them in order. Nothing is carried between steps, so resume needs only the
start step and the sequence equals the one computed without prefetch. Threads (not
processes) suffice: gathering rows from memory-mapped arrays is numpy work that releases
the GIL, and nothing is pickled across a process boundary.
"""

import collections
import concurrent.futures
from collections.abc import Callable, Iterator

import numpy as np

from data.batches import StepBatches

Batch = dict[str, np.ndarray]


def prefetch(make_batch: Callable[[int], Batch], start: int, stop: int, *, depth: int = 4,
             workers: int = 2) -> Iterator[Batch]:
    """Yields make_batch(step) for step in [start, stop), up to depth steps computed ahead."""
    if depth <= 0 or workers <= 0:
        raise ValueError(f"depth and workers must be positive, got depth={depth}, "
                         f"workers={workers}")
    with concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="prefetch") as pool:
        pending: collections.deque = collections.deque()
        next_step = start
        try:
            while pending or next_step < stop:
                while next_step < stop and len(pending) < depth:
                    pending.append(pool.submit(make_batch, next_step))
                    next_step += 1
                yield pending.popleft().result()
        finally:  # a consumer that stops early must not leave work queued
            for future in pending:
                future.cancel()


def prefetch_batches(batches: StepBatches, start: int, stop: int, process_index: int = 0,
                     process_count: int = 1, *, depth: int = 4,
                     workers: int = 2) -> Iterator[Batch]:
    """This process's blocks of global batches start..stop-1, prefetched in threads."""
    batches.batch(start, process_index, process_count)  # bad arguments fail here, in order
    return prefetch(lambda step: batches.batch(step, process_index, process_count), start,
                    stop, depth=depth, workers=workers)
