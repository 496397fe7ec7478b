"""Log-probabilities of chosen tokens under a checkpoint: the jitted scorer behind loglikelihood requests.

A request becomes rows (`Row`): model inputs, the token wanted at each position, and the
span of positions whose log-probabilities are summed. Decoders score a continuation in one
row (`causal_row`); encoders need one row per continuation token (pseudo_likelihood.py).
Rows are sorted by length and batched `batch_size` at a time, each batch right-padded to a
power-of-two length bucket (capped at the model's max_len), so a whole evaluation compiles
the scorer once per bucket; batches are split over the mesh's data and fsdp axes.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from train.generate.autoregressive import bucket
from train.mesh import batch_shardings, process_rows, replicated, sharding_context, to_global
from train.state import StateLayout

_KEYS = ("tokens", "segment_ids", "positions", "targets", "weights")


@dataclasses.dataclass(frozen=True)
class Row:
    """One scored sequence: inputs, the token wanted at each position, positions [start, end) summed."""

    tokens: tuple[int, ...]
    targets: tuple[int, ...]
    start: int
    end: int


def causal_row(context: Sequence[int], continuation: Sequence[int], max_len: int) -> Row:
    """A decoder's row for log p(continuation | context); the context is cut from the left to fit."""
    if not continuation:
        raise ValueError("an empty continuation has no tokens to score; give the continuation some text")
    if len(continuation) > max_len:
        raise ValueError(f"a continuation of {len(continuation)} tokens exceeds the model's max_len={max_len}")
    whole = (list(context) + list(continuation))[-(max_len + 1):]
    tokens, targets = whole[:-1], whole[1:]
    return Row(tuple(tokens), tuple(targets), len(tokens) - len(continuation), len(tokens))


def score_tokens(params: Any, batch: dict[str, jax.Array], *, graphdef: Any) -> dict[str, jax.Array]:
    """Per row: the summed log-probability of the weighted targets, and whether each is the argmax."""
    model = nnx.merge(graphdef, params)
    logits_BLV = model(batch["tokens"], batch["segment_ids"], batch["positions"]).astype(jnp.float32)
    log_probs_BLV = jax.nn.log_softmax(logits_BLV, axis=-1)
    target_BL = jnp.take_along_axis(log_probs_BLV, batch["targets"][..., None], axis=-1)[..., 0]
    weights_BL = batch["weights"]
    greedy_BL = jnp.argmax(logits_BLV, axis=-1) == batch["targets"]
    return {"log_prob": jnp.sum(target_BL * weights_BL, axis=-1),
            "greedy": jnp.all(greedy_BL | (weights_BL == 0), axis=-1)}


def compile_scorer(layout: StateLayout, mesh: Mesh) -> Callable[[Any, dict[str, jax.Array]], dict]:
    """`score_tokens` under jax.jit: params as laid out for training, rows over data/fsdp, results replicated."""
    jitted = jax.jit(functools.partial(score_tokens, graphdef=layout.graphdef),
                     in_shardings=(layout.shardings["params"], batch_shardings(mesh, _KEYS)),
                     out_shardings=replicated(mesh))

    def run(params: Any, batch: dict[str, jax.Array]) -> dict:
        with sharding_context(mesh):
            return jitted(params, batch)

    return run


class Scorer:
    """Scores rows in fixed-size batches with one compile per length bucket."""

    def __init__(self, layout: StateLayout, mesh: Mesh, *, batch_size: int, max_len: int, pad_id: int):
        self.mesh, self.batch_size, self.max_len, self.pad_id = mesh, batch_size, max_len, pad_id
        self._run = compile_scorer(layout, mesh)

    def length_bucket(self, n: int) -> int:
        """The padded length of a batch whose longest row has n tokens."""
        return min(bucket(n), self.max_len)

    def score(self, params: Any, rows: list[Row],
              progress: Callable[[int], Any] | None = None) -> list[tuple[float, bool]]:
        """(summed log-probability, all greedy) per row, in the order given; `progress(n)` as n rows finish."""
        order = sorted(range(len(rows)), key=lambda i: -len(rows[i].tokens))
        results: list[tuple[float, bool] | None] = [None] * len(rows)
        pending = None
        for first in range(0, len(order), self.batch_size):
            chunk = order[first:first + self.batch_size]
            out = self._run(params, to_global(process_rows(self._batch([rows[i] for i in chunk])), self.mesh))
            if pending is not None:  # fetch one batch late so dispatch runs ahead of the host
                _collect(results, *pending, progress)
            pending = (chunk, out)
        if pending is not None:
            _collect(results, *pending, progress)
        return results  # type: ignore[return-value]

    def _batch(self, rows: list[Row]) -> dict[str, np.ndarray]:
        """Rows right-padded to their bucket; missing rows are all padding (segment 0, no weight)."""
        length = self.length_bucket(max(len(r.tokens) for r in rows))
        batch = {k: np.zeros((self.batch_size, length), np.float32 if k == "weights" else np.int32) for k in _KEYS}
        batch["tokens"][:] = self.pad_id
        for i, row in enumerate(rows):
            n = len(row.tokens)
            if n > length:
                raise ValueError(f"a row of {n} tokens exceeds the model's max_len={self.max_len}")
            batch["tokens"][i, :n] = row.tokens
            batch["targets"][i, :n] = row.targets
            batch["segment_ids"][i, :n] = 1
            batch["positions"][i, :n] = np.arange(n)
            batch["weights"][i, row.start:row.end] = 1.0
        return batch


def _collect(results: list, chunk: list[int], out: dict[str, jax.Array], progress: Callable | None) -> None:
    log_prob, greedy = jax.device_get((out["log_prob"], out["greedy"]))
    for k, i in enumerate(chunk):
        results[i] = (float(log_prob[k]), bool(greedy[k]))
    if progress is not None:
        progress(len(chunk))
