"""The decoder's KV cache: one pytree of stacked per-layer keys and values, laid out like activations.

    {"k": [layers, batch, kv_heads, length, head_dim], "v": same}

Rows are left-padded by the decoding loop, so every row writes step t's key and value
at the same index (one in-place dynamic_update_slice per layer); which cache slots a
query may see is a mask the caller passes. Heads come before length so that attention's
matmuls read each head's [length, head_dim] block as it lies, with no transpose per step.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from model.config import ModelConfig

KVCache = dict[str, jax.Array]


def cache_logical_names(cfg: ModelConfig) -> tuple[str | None, ...]:
    """Logical names of each cache array: batch over the batch axes, kv heads over tensor."""
    heads = "act_kv_heads" if cfg.resolved_kv_heads != cfg.num_heads else "act_heads"
    return (None, "act_batch", heads, "act_length", "act_head_dim")


def cache_shape(cfg: ModelConfig, batch: int, length: int) -> tuple[int, ...]:
    """Shape of the k (and v) array for `batch` rows of up to `length` tokens."""
    return (cfg.num_layers, batch, cfg.resolved_kv_heads, length, cfg.resolved_head_dim)


def init_cache(cfg: ModelConfig, batch: int, length: int) -> KVCache:
    """An empty (zero) cache in the compute dtype."""
    zeros = jnp.zeros(cache_shape(cfg, batch, length), jnp.dtype(cfg.dtype))
    return {"k": zeros, "v": zeros}
