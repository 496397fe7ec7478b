"""What the backward pass keeps: the train loss's saved activations per device, attention's apart.

Reverse-mode autodiff saves some forward values (residuals) for the backward pass; the
remat policy decides which (none: nearly all, full: each layer's input, dots: matmul
outputs). They are read off the program itself: the residuals of `jax.vjp` of the loss
are traced (never run), and their per-device size comes from the shardings XLA gives
them in a compile of that forward pass. A residual is attention's [L, L] kind when two
of its dimensions are the row length and both double when the row does (a second trace
at twice the length tells them apart from, say, a [B, L, hidden] array with hidden = L).
The fused kernels keep no such array.
"""

from __future__ import annotations

import collections
import dataclasses
import math
from typing import Any, Callable

import jax
from jax.extend.core import Literal


@dataclasses.dataclass(frozen=True)
class SavedActivations:
    """One kind of saved activation: its global shape and dtype, how many, bytes per device in all."""

    shape: tuple[int, ...]
    dtype: str
    count: int
    bytes_per_device: int
    attention: bool  # an [L, L] array: scores, probabilities or the mask


def saved_activations(loss: Callable[[Any, Any], Any], params: Any, batch: dict[str, jax.ShapeDtypeStruct],
                      param_shardings: Any, batch_shardings: Any, seq_len: int) -> list[SavedActivations]:
    """Residuals `loss(params, batch)` saves for its gradient, largest first (call in the mesh context).

    `params` and `batch` are abstract (jax.ShapeDtypeStruct); parameters and batch that the
    backward pass reads are inputs, not saved activations, and are left out.
    """
    def residuals(params, batch):
        return jax.vjp(lambda p: loss(p, batch), params)[1]

    shapes, kept = _traced_residuals(residuals, params, batch)
    doubled = {k: jax.ShapeDtypeStruct((v.shape[0], 2 * v.shape[1]), v.dtype) for k, v in batch.items()}
    shapes_doubled, kept_doubled = _traced_residuals(residuals, params, doubled)
    same_program = kept == kept_doubled and len(shapes) == len(shapes_doubled)
    compiled = jax.jit(residuals, in_shardings=(param_shardings, batch_shardings)).lower(params, batch).compile()
    out_shardings = jax.tree.leaves(compiled.output_shardings)
    groups: dict[tuple, list[int]] = collections.defaultdict(lambda: [0, 0])
    for index in kept:
        shape, dtype, itemsize = shapes[index]
        attention = same_program and _quadratic(shape, shapes_doubled[index][0], seq_len)
        local = out_shardings[index].shard_shape(shape)
        group = groups[(shape, dtype, attention)]
        group[0] += 1
        group[1] += math.prod(local) * itemsize
    found = [SavedActivations(shape, dtype, count, size, attention)
             for (shape, dtype, attention), (count, size) in groups.items()]
    return sorted(found, key=lambda saved: -saved.bytes_per_device)


def _traced_residuals(residuals: Callable, params: Any, batch: Any) -> tuple[list[tuple], list[int]]:
    """Every residual's (shape, dtype name, itemsize) and the indices of those computed in the forward pass."""
    closed = jax.make_jaxpr(residuals)(params, batch)
    inputs = set(closed.jaxpr.invars) | set(closed.jaxpr.constvars)
    shapes, kept, seen = [], [], set()
    for index, var in enumerate(closed.jaxpr.outvars):
        # itemsize from the dtype itself: a residual may be a PRNG key (key<fry>), which numpy has no name for
        shapes.append((tuple(var.aval.shape), str(var.aval.dtype), var.aval.dtype.itemsize))
        if isinstance(var, Literal) or var in inputs or var in seen:
            continue  # a literal, an input (parameters, batch) or a second reference to one array
        seen.add(var)
        kept.append(index)
    return shapes, kept


def _quadratic(shape: tuple[int, ...], doubled: tuple[int, ...], seq_len: int) -> bool:
    """Whether two dimensions are the row length and both doubled with it."""
    grown = [a for a, b in zip(shape, doubled) if b == 2 * a == 2 * seq_len]
    return len(grown) >= 2 and len(shape) == len(doubled)
