"""Held-out MLM evaluation: loss, accuracy, perplexity and the most-frequent-token baseline."""

from __future__ import annotations

import math
from typing import Any, Callable

import jax
import numpy as np

from data.batches import eval_batches
from data.packing import PackedRows
from train.mesh import process_rows, to_global

_SUM_KEYS = ("loss_sum", "correct", "count", "tokens", "baseline_correct")


# Rows read for the baseline token: all of a small corpus, an even sample of a large store.
_BASELINE_SAMPLE_TOKENS = 1 << 22


def most_frequent_token(rows: PackedRows, special_ids: np.ndarray) -> int:
    """The most frequent ordinary token of the training rows: the baseline's constant guess."""
    num_rows, length = rows.tokens.shape
    stride = max(1, num_rows * length // _BASELINE_SAMPLE_TOKENS)
    sample = np.asarray(rows.tokens[::stride]).ravel()
    limit = rows.vocab_size or int(sample.max(initial=0)) + 1
    # Damaged ids are left out here: the batch that reads them reports them (PackedRows.rows).
    counts = np.bincount(sample[(sample >= 0) & (sample < limit)], minlength=1)
    counts[special_ids[special_ids < counts.size]] = 0
    return int(np.argmax(counts))


def evaluate(params: Any, eval_fn: Callable, rows: PackedRows, *, batch_size: int, max_batches: int,
             mesh: jax.sharding.Mesh) -> dict[str, float]:
    """Runs `eval_fn` over fixed held-out batches and reduces the sums to metrics."""
    totals = dict.fromkeys(_SUM_KEYS, 0.0)
    pending = None
    for index, batch in enumerate(eval_batches(rows, batch_size, max_batches or None)):
        sums = eval_fn(params, to_global(process_rows(batch), mesh), np.int32(index))
        if pending is not None:  # fetch one batch late so dispatch runs ahead of the host
            _accumulate(totals, pending)
        pending = sums
    if pending is not None:
        _accumulate(totals, pending)
    count = max(totals["count"], 1.0)
    loss = totals["loss_sum"] / count
    return {
        "loss": loss,
        "accuracy": totals["correct"] / count,
        "perplexity": math.exp(min(loss, 50.0)),
        "baseline_accuracy": totals["baseline_correct"] / count,
        "masked_tokens": totals["count"],
        "tokens": totals["tokens"],
    }


def _accumulate(totals: dict[str, float], sums: dict[str, jax.Array]) -> None:
    for key, value in jax.device_get(sums).items():
        totals[key] += float(value)
