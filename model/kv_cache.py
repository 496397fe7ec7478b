"""The decoder's KV cache: per-layer keys and values, laid out for the decode step's attention.

    {"k": [layer 0 [batch, kv_heads, head_dim, length], layer 1, ...],
     "v": [layer 0 [batch, kv_heads, length, head_dim], layer 1, ...]}

One array per layer, so a decode step reads and writes each layer's cache where it lies
(slicing a row out of one stacked array copies it on every step). Rows are left-padded by
the decoding loop, so every row writes step t's key and value at the same index: one
in-place dynamic_update_slice per layer, after that step's attention has read the cache
(`write_cache`). Which cache slots a query may see is a mask the caller passes.

Keys are held [head_dim, length] and values [length, head_dim]: a decode step's
attention then sums over each cache's non-minor axis (model/attention.py
`cached_attention`), in loops XLA:CPU vectorizes along the contiguous minor axis. In the
benchmark decoder's loop (benchmarks/decode.py: 3 query heads per kv head, 160 slots)
that took ~20% less time at batch 8 than batched matmuls over the transposed layout
(M=3 matmuls per row and head: 375 vs 490 us per layer), and about the same at batch 1.
`LAYOUT` is the one place that says this. An exported decode step takes the cache
stacked ([layers, ...]; `stack_cache` / `unstack_cache`).

A bfloat16 cache is held as its 16-bit patterns (uint16; `held_dtype`, `cache_values`
reads it as bfloat16): XLA:CPU updates a bfloat16 array through a float32 copy of it
(converted there and back at every step), and a uint16 update viewed as bfloat16 after
it rewrites the whole array, while a uint16 array is updated in place. The stacked form
holds bfloat16, so an exported step takes and returns bfloat16.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from model.config import ModelConfig

KVCache = dict[str, list[jax.Array]]


# Each layer's cache array, by axis: b batch, k kv heads, s slots (length), d head_dim.
LAYOUT = {"k": "bkds", "v": "bksd"}
# The slots stay whole along a sequence mesh axis: every decode step reads all of them.
_NAMES = {"b": "act_batch", "s": "act_kv_length", "d": "act_head_dim"}


def cache_logical_names(cfg: ModelConfig) -> dict[str, tuple[str | None, ...]]:
    """Logical names of each layer's k and v arrays: batch over the batch axes, kv heads over tensor."""
    names = {**_NAMES, "k": "act_kv_heads" if cfg.resolved_kv_heads != cfg.num_heads else "act_heads"}
    return {name: tuple(names[axis] for axis in layout) for name, layout in LAYOUT.items()}


def cache_shapes(cfg: ModelConfig, batch: Any, length: Any) -> dict[str, tuple[Any, ...]]:
    """Shapes of one layer's k and v arrays for `batch` rows of up to `length` tokens.

    `batch` and `length` may be ints, symbolic dimensions or names (for a manifest).
    """
    sizes = {"b": batch, "k": cfg.resolved_kv_heads, "s": length, "d": cfg.resolved_head_dim}
    return {name: tuple(sizes[axis] for axis in layout) for name, layout in LAYOUT.items()}


def num_slots(cache: KVCache) -> int:
    """The number of token slots in a cache."""
    return cache["v"][0].shape[LAYOUT["v"].index("s")]


def held_dtype(dtype) -> jnp.dtype:
    """How a cache of `dtype` values is held: bfloat16 as uint16 patterns (see above), others as they are."""
    return jnp.dtype(jnp.uint16) if jnp.dtype(dtype) == jnp.bfloat16 else jnp.dtype(dtype)


def cache_values(layer: jax.Array) -> jax.Array:
    """One layer's cache array as values: uint16 patterns read as bfloat16."""
    return jax.lax.bitcast_convert_type(layer, jnp.bfloat16) if layer.dtype == jnp.uint16 else layer


def init_cache(cfg: ModelConfig, batch: int, length: int) -> KVCache:
    """An empty (zero) cache of compute-dtype values (held as `held_dtype`)."""
    return {name: [jnp.zeros(shape, held_dtype(cfg.dtype))] * cfg.num_layers
            for name, shape in cache_shapes(cfg, batch, length).items()}


def write_cache(cache_k: jax.Array, cache_v: jax.Array, k: jax.Array, v: jax.Array, index: jax.Array | int, *,
                after: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    """One layer's cache with keys and values [B, T, K, D] written at slots index..index+T-1.

    `after`, the attention output [B, T, H, D] that read this cache, orders the write
    after those reads: XLA updates the cache in place only when its copy-insertion pass
    can see that order in the data, so k and v gain `0 * after` (one element per row and
    kv head; floats do not fold it away, and it changes nothing unless that output is
    already NaN or infinite). Without it, XLA copied every layer's cache twice per
    decode step.
    """
    if after is not None:
        batch, length, num_kv_heads, _ = k.shape
        zero = 0.0 * after.reshape(batch, length, num_kv_heads, -1)[..., :1]
        k, v = k + zero.astype(k.dtype), v + zero.astype(v.dtype)

    def write(cache: jax.Array, new: jax.Array, layout: str) -> jax.Array:
        new = jnp.einsum(f"bskd->{layout}", new).astype(cache_values(cache).dtype)
        if cache.dtype == jnp.uint16:  # bfloat16 values held as their patterns (see above)
            new = jax.lax.bitcast_convert_type(new, jnp.uint16)
        return jax.lax.dynamic_update_slice(cache, new, tuple(index if axis == "s" else 0 for axis in layout))

    return write(cache_k, k, LAYOUT["k"]), write(cache_v, v, LAYOUT["v"])


def stack_cache(cache: KVCache) -> dict[str, jax.Array]:
    """The cache as two arrays of values, [layers, *one layer's shape] (see `LAYOUT`)."""
    return {name: jnp.stack([cache_values(layer) for layer in layers]) for name, layers in cache.items()}


def unstack_cache(stacked: dict[str, jax.Array]) -> KVCache:
    """The inverse of `stack_cache` (each layer held as `held_dtype`)."""
    return {name: [jax.lax.bitcast_convert_type(layer, held_dtype(layer.dtype)) for layer in array]
            for name, array in stacked.items()}
