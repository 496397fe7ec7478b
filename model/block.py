"""Transformer layers the stacks repeat: BERT's post-LN encoder block, Llama's pre-RMSNorm decoder block."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from model.attention import Attention, cached_attention
from model.config import ModelConfig
from model.dropout import dropout, site_key
from model.kv_cache import write_cache
from model.mlp import Mlp
from model.norm import LayerNorm, RMSNorm
from model.sharding import constrain


def _add(x: jax.Array, h: jax.Array) -> jax.Array:
    """Residual sum in float32; the LayerNorm that follows brings it back to compute dtype."""
    return x.astype(jnp.float32) + h.astype(jnp.float32)


class EncoderBlock(nnx.Module):
    """Bidirectional self-attention and MLP, each followed by dropout, residual add, LayerNorm."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        dtype, param_dtype = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
        self.attention = Attention(
            cfg.hidden, cfg.num_heads, cfg.resolved_head_dim, causal=False,
            dropout_rate=cfg.attention_dropout, init_std=cfg.init_std,
            attention_impl=cfg.attention_impl, max_segments=cfg.max_segments_per_row, dtype=dtype,
            param_dtype=param_dtype, rngs=rngs)
        self.attention_norm = LayerNorm(cfg.hidden, eps=cfg.layer_norm_eps, dtype=dtype,
                                        param_dtype=param_dtype, rngs=rngs)
        self.mlp = Mlp(cfg.hidden, cfg.mlp_dim, init_std=cfg.init_std, dtype=dtype,
                       param_dtype=param_dtype, rngs=rngs)
        self.mlp_norm = LayerNorm(cfg.hidden, eps=cfg.layer_norm_eps, dtype=dtype,
                                  param_dtype=param_dtype, rngs=rngs)
        self.dropout_rate = cfg.dropout

    def __call__(self, x: jax.Array, segment_ids: jax.Array, *,
                 dropout_key: jax.Array | None = None) -> jax.Array:
        """x [B, L, hidden] -> [B, L, hidden]; three dropout sites keyed from `dropout_key`."""
        h = self.attention(x, segment_ids, dropout_key=site_key(dropout_key, 0))
        x = self.attention_norm(_add(x, dropout(h, self.dropout_rate, site_key(dropout_key, 1))))
        h = self.mlp(x)
        x = self.mlp_norm(_add(x, dropout(h, self.dropout_rate, site_key(dropout_key, 2))))
        return constrain(x, ("act_batch", "act_length", "act_embed"))


class DecoderBlock(nnx.Module):
    """Llama layer: x + attn(rmsnorm(x)), then x + swiglu(rmsnorm(x)); causal, RoPE, no biases."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        dtype, param_dtype = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
        norm = dict(eps=cfg.layer_norm_eps, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.attention_norm = RMSNorm(cfg.hidden, **norm)
        self.attention = Attention(
            cfg.hidden, cfg.num_heads, cfg.resolved_head_dim, num_kv_heads=cfg.resolved_kv_heads,
            causal=True, dropout_rate=cfg.attention_dropout, init_std=cfg.init_std, use_bias=False,
            rope_theta=cfg.rope_theta, attention_impl=cfg.attention_impl,
            max_segments=cfg.max_segments_per_row, dtype=dtype, param_dtype=param_dtype, lora_cfg=cfg.lora,
            rngs=rngs)
        self.mlp_norm = RMSNorm(cfg.hidden, **norm)
        self.mlp = Mlp(cfg.hidden, cfg.mlp_dim, init_std=cfg.init_std, gated=True, use_bias=False,
                       dtype=dtype, param_dtype=param_dtype, lora_cfg=cfg.lora, rngs=rngs)
        self.dropout_rate = cfg.dropout
        self.dtype = dtype

    def __call__(self, x: jax.Array, segment_ids: jax.Array, positions: jax.Array, *,
                 dropout_key: jax.Array | None = None) -> tuple[jax.Array, jax.Array, jax.Array]:
        """x [B, L, hidden] (float32 residual stream) -> (x, keys, values [B, L, K, D]) for a cache."""
        h, k, v = self.attention.attend_with_kv(
            self.attention_norm(x), segment_ids, positions=positions, dropout_key=site_key(dropout_key, 0))
        x = _add(x, dropout(h, self.dropout_rate, site_key(dropout_key, 1)))
        return self._mlp_residual(x, site_key(dropout_key, 2), site_key(dropout_key, 3)), k, v

    def decode(self, x: jax.Array, positions: jax.Array, cache_k: jax.Array, cache_v: jax.Array,
               index: jax.Array, key_mask: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        """New tokens x [B, T, hidden] attending to the cache slots `key_mask` [B, T, S] allows
        (never slots index..index+T-1) and to each other, then written at slot `index` of this
        layer's cache (in place; model/kv_cache.py)."""
        q, k, v = self.attention.project(self.attention_norm(x), positions)
        out = cached_attention(q, k, v, cache_k, cache_v, key_mask)
        x = _add(x, self.attention.project_out(out))
        cache_k, cache_v = write_cache(cache_k, cache_v, k, v, index, after=out)
        return self._mlp_residual(x, None), cache_k, cache_v

    def _mlp_residual(self, x: jax.Array, key: jax.Array | None, adapter_key: jax.Array | None = None) -> jax.Array:
        x = _add(x, dropout(self.mlp(self.mlp_norm(x), adapter_key), self.dropout_rate, key))
        return constrain(x, ("act_batch", "act_length", "act_embed"))
