"""The feed-forward half of a transformer block: BERT's GELU MLP or Llama's SwiGLU."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from model import lora, precision
from model.config import LoraConfig
from model.sharding import constrain, param_init


class Mlp(nnx.Module):
    """hidden -> mlp_dim -> hidden: exact (erf) GELU with biases, or gated SiLU (SwiGLU).

    With `gated`, a third projection `gate` multiplies silu(gate(x)) into up(x), as HF
    Llama's gate_proj / up_proj / down_proj. `lora_cfg` gives the projections it targets
    (gate, up, down) an adapter (model/lora.py).
    """

    def __init__(self, hidden: int, mlp_dim: int, *, init_std: float = 0.02, gated: bool = False,
                 use_bias: bool = True, dtype: jnp.dtype = jnp.float32,
                 param_dtype: jnp.dtype = jnp.float32, lora_cfg: LoraConfig | None = None, rngs: nnx.Rngs):
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
        if lora_cfg is not None and lora_cfg.rank:
            names = {"up": (self.up, ("embed",), ("mlp",)), "down": (self.down, ("mlp",), ("embed",))}
            if gated:
                names["gate"] = (self.gate, ("embed",), ("mlp",))
            for target in lora_cfg.targets:
                if target in names:
                    lora.attach(*names[target], lora_cfg, rngs)
        self.gated = gated
        self.dtype = dtype

    def __call__(self, x: jax.Array, adapter_key: jax.Array | None = None) -> jax.Array:
        """x [B, L, hidden] -> [B, L, hidden]; the activation in float32 (HF's "gelu" is the erf form).

        `adapter_key` keys the LoRA adapters' input dropout (training only).
        """
        up = lora.project(self.up, x, adapter_key, 1).astype(jnp.float32)
        if self.gated:
            h = jax.nn.silu(lora.project(self.gate, x, adapter_key, 0).astype(jnp.float32)) * up
        else:
            h = gelu(up)
        h = constrain(h.astype(self.dtype), ("act_batch", "act_length", "act_mlp"))
        return constrain(lora.project(self.down, h, adapter_key, 2), ("act_batch", "act_length", "act_embed"))


def gelu(x: jax.Array) -> jax.Array:
    """Exact GELU as PyTorch computes it, x/2 * (1 + erf(x/sqrt(2))).

    jax.nn.gelu(approximate=False) goes through erfc, which XLA:CPU evaluates with
    exponentials and selects; erf is one polynomial. The two agree to 1e-6.
    """
    return 0.5 * x * (1.0 + jax.lax.erf(x * (2.0 ** -0.5)))
