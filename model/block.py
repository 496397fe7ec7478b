"""One BERT encoder layer (post-LN), the unit that the layer stack repeats."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from model.attention import Attention
from model.config import ModelConfig
from model.dropout import dropout, site_key
from model.mlp import Mlp
from model.norm import LayerNorm
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
            dropout_rate=cfg.attention_dropout, init_std=cfg.init_std, dtype=dtype,
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
