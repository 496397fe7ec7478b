"""The feed-forward half of a transformer block: BERT's GELU MLP or Llama's SwiGLU."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from model import precision
from model.sharding import constrain, param_init


class Mlp(nnx.Module):
    """hidden -> mlp_dim -> hidden: exact (erf) GELU with biases, or gated SiLU (SwiGLU).

    With `gated`, a third projection `gate` multiplies silu(gate(x)) into up(x), as HF
    Llama's gate_proj / up_proj / down_proj.
    """

    def __init__(self, hidden: int, mlp_dim: int, *, init_std: float = 0.02, gated: bool = False,
                 use_bias: bool = True, dtype: jnp.dtype = jnp.float32,
                 param_dtype: jnp.dtype = jnp.float32, rngs: nnx.Rngs):
        normal = nnx.initializers.normal(init_std)
        zeros = nnx.initializers.zeros_init()

        def linear(d_in: int, d_out: int, names: tuple[str, str]) -> precision.Linear:
            return precision.Linear(
                d_in, d_out, use_bias=use_bias, kernel_init=param_init(normal, names),
                bias_init=param_init(zeros, names[1:]), dtype=dtype, param_dtype=param_dtype, rngs=rngs)

        if gated:
            self.gate = linear(hidden, mlp_dim, ("embed", "mlp"))
        self.up = linear(hidden, mlp_dim, ("embed", "mlp"))
        self.down = linear(mlp_dim, hidden, ("mlp", "embed"))
        self.gated = gated
        self.dtype = dtype

    def __call__(self, x: jax.Array) -> jax.Array:
        """x [B, L, hidden] -> [B, L, hidden]; the activation in float32 (HF's "gelu" is the erf form)."""
        if self.gated:
            h = jax.nn.silu(self.gate(x).astype(jnp.float32)) * self.up(x).astype(jnp.float32)
        else:
            h = gelu(self.up(x).astype(jnp.float32))
        h = constrain(h.astype(self.dtype), ("act_batch", "act_length", "act_mlp"))
        return constrain(self.down(h), ("act_batch", "act_length", "act_embed"))


def gelu(x: jax.Array) -> jax.Array:
    """Exact GELU as PyTorch computes it, x/2 * (1 + erf(x/sqrt(2))).

    jax.nn.gelu(approximate=False) goes through erfc, which XLA:CPU evaluates with
    exponentials and selects; erf is one polynomial. The two agree to 1e-6.
    """
    return 0.5 * x * (1.0 + jax.lax.erf(x * (2.0 ** -0.5)))
