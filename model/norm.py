"""LayerNorm (BERT) and RMSNorm (Llama), computed in float32 whatever the activation dtype."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from model.sharding import param_init


class LayerNorm(nnx.Module):
    """LayerNorm over the last axis with ('norm',) scale and bias; float32 statistics."""

    def __init__(self, features: int, *, eps: float, dtype: jnp.dtype, param_dtype: jnp.dtype,
                 rngs: nnx.Rngs):
        ones = param_init(nnx.initializers.ones_init(), ("norm",))
        zeros = param_init(nnx.initializers.zeros_init(), ("norm",))
        self.scale = nnx.Param(ones(rngs.params(), (features,), param_dtype))
        self.bias = nnx.Param(zeros(rngs.params(), (features,), param_dtype))
        self.eps = eps
        self.dtype = dtype

    def __call__(self, x: jax.Array) -> jax.Array:
        """Normalizes with the centred variance (as PyTorch does) and returns `dtype`."""
        x = x.astype(jnp.float32)
        mean = x.mean(axis=-1, keepdims=True)
        var = jnp.square(x - mean).mean(axis=-1, keepdims=True)
        y = (x - mean) * jax.lax.rsqrt(var + self.eps)
        y = y * self.scale[...].astype(jnp.float32) + self.bias[...].astype(jnp.float32)
        return y.astype(self.dtype)


class RMSNorm(nnx.Module):
    """Llama's RMSNorm: x / rms(x) * scale, with a ('norm',) scale and no bias; float32 statistics."""

    def __init__(self, features: int, *, eps: float, dtype: jnp.dtype, param_dtype: jnp.dtype,
                 rngs: nnx.Rngs):
        ones = param_init(nnx.initializers.ones_init(), ("norm",))
        self.scale = nnx.Param(ones(rngs.params(), (features,), param_dtype))
        self.eps = eps
        self.dtype = dtype

    def __call__(self, x: jax.Array) -> jax.Array:
        """Normalizes by the root mean square over the last axis and returns `dtype`."""
        x = x.astype(jnp.float32)
        y = x * jax.lax.rsqrt(jnp.square(x).mean(axis=-1, keepdims=True) + self.eps)
        return (y * self.scale[...].astype(jnp.float32)).astype(self.dtype)
