"""Output heads on top of the final hidden states."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from model import precision
from model.config import ModelConfig
from model.norm import LayerNorm
from model.sharding import constrain, param_init


class MlmHead(nnx.Module):
    """BERT's MLM head: dense + GELU + LayerNorm, then logits on the tied word embeddings + bias."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        dtype, param_dtype = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
        self.transform = precision.Linear(
            cfg.hidden, cfg.hidden,
            kernel_init=param_init(nnx.initializers.normal(cfg.init_std), ("embed", "transform")),
            bias_init=param_init(nnx.initializers.zeros_init(), ("transform",)),
            dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.norm = LayerNorm(cfg.hidden, eps=cfg.layer_norm_eps, dtype=dtype,
                              param_dtype=param_dtype, rngs=rngs)
        zeros = param_init(nnx.initializers.zeros_init(), ("vocab",))
        self.bias = nnx.Param(zeros(rngs.params(), (cfg.vocab_size,), param_dtype))
        self.dtype = dtype

    def __call__(self, x: jax.Array, word_embedding: jax.Array) -> jax.Array:
        """x [..., hidden], word_embedding [V, hidden] -> float32 logits [..., V]."""
        h = self.transform(x).astype(jnp.float32)
        h = self.norm(jax.nn.gelu(h, approximate=False))
        logits = precision.project(h.astype(self.dtype), word_embedding, kernel_transposed=True,
                                   out_dtype=jnp.float32)
        logits = logits + self.bias[...].astype(jnp.float32)
        if logits.ndim == 3:  # [B, L, V], or [B, K, V] for K gathered prediction positions
            logits = constrain(logits, ("act_batch", "act_length", "act_vocab"))
        return logits
