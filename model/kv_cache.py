"""The decoder's KV cache: per-layer keys and values, laid out like activations.

    {"k": [layer 0 [batch, kv_heads, length, head_dim], layer 1, ...], "v": same}

One array per layer, so a decode step reads and writes each layer's cache where it lies
(slicing a row out of one stacked array copies it on every step). Rows are left-padded by
the decoding loop, so every row writes step t's key and value at the same index (one
in-place dynamic_update_slice per layer); which cache slots a query may see is a mask the
caller passes. Heads come before length so that attention's matmuls read each head's
[length, head_dim] block as it lies, with no transpose per step. An exported decode step
takes the cache stacked ([layers, ...]; `stack_cache` / `unstack_cache`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from model.config import ModelConfig

KVCache = dict[str, list[jax.Array]]


def cache_logical_names(cfg: ModelConfig) -> tuple[str | None, ...]:
    """Logical names of each layer's cache array: batch over the batch axes, kv heads over tensor."""
    heads = "act_kv_heads" if cfg.resolved_kv_heads != cfg.num_heads else "act_heads"
    return ("act_batch", heads, "act_length", "act_head_dim")


def cache_shape(cfg: ModelConfig, batch: int, length: int) -> tuple[int, ...]:
    """Shape of one layer's k (and v) array for `batch` rows of up to `length` tokens."""
    return (batch, cfg.resolved_kv_heads, length, cfg.resolved_head_dim)


def init_cache(cfg: ModelConfig, batch: int, length: int) -> KVCache:
    """An empty (zero) cache in the compute dtype."""
    zeros = jnp.zeros(cache_shape(cfg, batch, length), jnp.dtype(cfg.dtype))
    return {"k": [zeros] * cfg.num_layers, "v": [zeros] * cfg.num_layers}


def stack_cache(cache: KVCache) -> dict[str, jax.Array]:
    """The cache as two [layers, batch, kv_heads, length, head_dim] arrays."""
    return {name: jnp.stack(layers) for name, layers in cache.items()}


def unstack_cache(stacked: dict[str, jax.Array]) -> KVCache:
    """The inverse of `stack_cache`."""
    return {name: list(array) for name, array in stacked.items()}
