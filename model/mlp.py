"""The feed-forward half of a transformer block (BERT's intermediate + output dense)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from model.sharding import constrain, param_init


class Mlp(nnx.Module):
    """hidden -> mlp_dim -> exact (erf) GELU -> hidden, both projections with bias."""

    def __init__(self, hidden: int, mlp_dim: int, *, init_std: float = 0.02,
                 dtype: jnp.dtype = jnp.float32, param_dtype: jnp.dtype = jnp.float32,
                 rngs: nnx.Rngs):
        normal = nnx.initializers.normal(init_std)
        zeros = nnx.initializers.zeros_init()
        self.up = nnx.Linear(
            hidden, mlp_dim, kernel_init=param_init(normal, ("embed", "mlp")),
            bias_init=param_init(zeros, ("mlp",)), dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.down = nnx.Linear(
            mlp_dim, hidden, kernel_init=param_init(normal, ("mlp", "embed")),
            bias_init=param_init(zeros, ("embed",)), dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.dtype = dtype

    def __call__(self, x: jax.Array) -> jax.Array:
        """x [B, L, hidden] -> [B, L, hidden]; GELU in float32 (HF's "gelu" is the erf form)."""
        h = jax.nn.gelu(self.up(x).astype(jnp.float32), approximate=False).astype(self.dtype)
        h = constrain(h, ("act_batch", "act_length", "act_mlp"))
        return constrain(self.down(h), ("act_batch", "act_length", "act_embed"))
