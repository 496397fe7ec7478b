"""Dropout driven by an explicit key, so modules hold parameters and nothing else.

The keep/drop decision of each element is a cheap integer hash of (key, element index)
computed inside the same fusion as the select, instead of `jax.random.bits`: threefry
spends ~20 rounds per 64 random bits and XLA materialises them, which made dropout about
a quarter of a CPU BERT-base step. The hash is a function of the element's global index,
so a mask is identical however the array is sharded, and of the key, so it is as
reproducible (and as resumable) as the key itself.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

_GOLDEN = 0x9E3779B9  # 2^32 / golden ratio: spreads consecutive column indices over the word
_OFFSET = 0x6A09E667  # keeps the all-zero key from hashing element 0 to 0


def _mix(x: jax.Array) -> jax.Array:
    """A 32-bit avalanche bijection (Wellons' lowbias32): every input bit flips ~half the output bits."""
    x = x ^ (x >> 16)
    x = x * jnp.uint32(0x7FEB352D)
    x = x ^ (x >> 15)
    x = x * jnp.uint32(0x846CA68B)
    return x ^ (x >> 16)


def random_words(key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """uint32 [shape]: a hash of (key, row, column) per element, row = index over all but the last axis.

    Rows are counted in 32 bits, so arrays of up to 2^32 rows (of any length) get distinct
    streams; the column enters after the first mix, so no two elements of a row share input.
    """
    words = jax.random.key_data(key).reshape(-1).astype(jnp.uint32)
    row = jnp.zeros(shape, jnp.uint32)
    for axis in range(len(shape) - 1):
        row = row * jnp.uint32(shape[axis]) + jax.lax.broadcasted_iota(jnp.uint32, shape, axis)
    column = jax.lax.broadcasted_iota(jnp.uint32, shape, len(shape) - 1) if shape else row
    return _mix(_mix((row ^ words[0]) + jnp.uint32(_OFFSET)) ^ (column * jnp.uint32(_GOLDEN) + words[-1]))


def dropout(x: jax.Array, rate: float, key: jax.Array | None) -> jax.Array:
    """Zeroes a `rate` fraction of `x` and rescales the rest; identity when key is None."""
    if key is None or rate <= 0.0:
        return x
    threshold = min(round(rate * 2.0 ** 32), 2 ** 32 - 1)
    drop = random_words(key, x.shape) < jnp.uint32(threshold)
    return jnp.where(drop, jnp.zeros_like(x), x / (1.0 - rate))


def site_key(key: jax.Array | None, site: int) -> jax.Array | None:
    """Derives the key of one dropout site from its parent key (None stays None)."""
    return None if key is None else jax.random.fold_in(key, site)


def layer_keys(key: jax.Array | None, num_layers: int) -> jax.Array | None:
    """One key per stacked layer, scanned alongside the layer parameters."""
    return None if key is None else jax.random.split(key, num_layers)
