"""Dropout driven by an explicit key, so modules hold parameters and nothing else."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def dropout(x: jax.Array, rate: float, key: jax.Array | None) -> jax.Array:
    """Zeroes a `rate` fraction of `x` and rescales the rest; identity when key is None."""
    if key is None or rate <= 0.0:
        return x
    # 16 random bits per element: half the counter-mode hashing of a float32 draw, with the
    # rate exact to 2^-16. Random bits are a large share of a CPU step with dropout.
    drop = jax.random.bits(key, x.shape, jnp.uint16) < round(rate * 65536)
    return jnp.where(drop, jnp.zeros_like(x), x / (1.0 - rate))


def site_key(key: jax.Array | None, site: int) -> jax.Array | None:
    """Derives the key of one dropout site from its parent key (None stays None)."""
    return None if key is None else jax.random.fold_in(key, site)


def layer_keys(key: jax.Array | None, num_layers: int) -> jax.Array | None:
    """One key per stacked layer, scanned alongside the layer parameters."""
    return None if key is None else jax.random.split(key, num_layers)
