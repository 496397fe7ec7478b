"""LoRA: trainable low-rank adapters beside frozen projections (Hu et al. 2021, in PEFT's layout).

A projection y = x W gains (alpha / rank) * dropout(x) A B, with A [in..., rank] and
B [rank, out...]. A starts as PEFT initializes lora_A (uniform within +-1/sqrt(fan_in)) and
B at zero, so a model with fresh adapters computes exactly what its base computes.

The adapter is a module held inside its projection, under the name `lora`
(`layers.attention.query.lora.{a,b}` beside `layers.attention.query.kernel`), so its
parameters sit next to the base weight as PEFT's `q_proj.lora_A` / `lora_B` do. A's input
axes and B's output axes carry the base kernel's logical names, so the rules table shards
an adapter like its base weight (the rank axis is small and left whole); under the stacked
layers' nnx.vmap/scan they gain the `layers` axis as every parameter does. Both products go
through `precision.project`, the one precision policy. Which parameters train is decided in
train/ (a model with adapters trains only what lies under a `lora` key).
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from model import precision
from model.config import LoraConfig
from model.dropout import dropout, site_key
from model.sharding import LogicalNames, param_init

ADAPTER = "lora"  # the attribute of a projection (and the params-tree key) holding its adapter


class Adapter(nnx.Module):
    """The low-rank update of one projection: x [..., in...] -> [..., out...] in the compute dtype."""

    def __init__(self, in_shape: tuple[int, ...], out_shape: tuple[int, ...], in_names: LogicalNames,
                 out_names: LogicalNames, cfg: LoraConfig, *, dtype: jnp.dtype, param_dtype: jnp.dtype,
                 rngs: nnx.Rngs):
        bound = 1.0 / math.sqrt(math.prod(in_shape))  # PEFT: kaiming_uniform_(a=sqrt(5)) on [rank, fan_in]
        uniform = lambda key, shape, dtype: jax.random.uniform(key, shape, dtype, -bound, bound)
        self.a = nnx.Param(param_init(uniform, (*in_names, None))(rngs.params(), (*in_shape, cfg.rank), param_dtype))
        zeros = param_init(nnx.initializers.zeros_init(), (None, *out_names))
        self.b = nnx.Param(zeros(rngs.params(), (cfg.rank, *out_shape), param_dtype))
        self.scale = cfg.alpha / cfg.rank
        self.dropout_rate = cfg.dropout
        self.contract = len(in_shape)
        self.dtype = dtype

    def __call__(self, x: jax.Array, dropout_key: jax.Array | None = None) -> jax.Array:
        h = dropout(x, self.dropout_rate, dropout_key)
        h = precision.project(h, self.a[...], self.contract, dtype=self.dtype)  # [..., rank]
        return precision.project(h, self.b[...], 1, dtype=self.dtype) * jnp.asarray(self.scale, self.dtype)


def attach(projection: nnx.Module, in_names: LogicalNames, out_names: LogicalNames, cfg: LoraConfig,
           rngs: nnx.Rngs) -> None:
    """Gives a precision.Linear / precision.Einsum projection an adapter (kernel [in..., out...])."""
    kernel = projection.kernel
    contract = len(in_names)
    projection.lora = Adapter(kernel.shape[:contract], kernel.shape[contract:], in_names, out_names, cfg,
                              dtype=projection.dtype or jnp.float32, param_dtype=kernel.dtype, rngs=rngs)


def project(projection: nnx.Module, x: jax.Array, dropout_key: jax.Array | None = None,
            site: int = 0) -> jax.Array:
    """projection(x), plus its adapter's update when it has one (dropout keyed by `site`)."""
    y = projection(x)
    adapter = getattr(projection, ADAPTER, None)
    if adapter is None:
        return y
    delta = adapter(x, site_key(dropout_key, site))
    return (y.astype(jnp.float32) + delta.astype(jnp.float32)).astype(y.dtype)


def merged_kernel(projection: nnx.Module) -> jax.Array:
    """The projection's kernel with its adapter folded in (W + scale * A B), for inference layouts."""
    kernel = projection.kernel[...]
    adapter = getattr(projection, ADAPTER, None)
    if adapter is None:
        return kernel
    return merge(kernel, adapter.a[...], adapter.b[...], adapter.scale)


def merge(kernel: Any, a: Any, b: Any, scale: float, *, stacked: bool = False) -> jax.Array:
    """kernel [in..., out...] + scale * A [in..., r] B [r, out...], summed in float32 (numpy inputs too).

    `stacked`: every array has a leading layers axis, merged layer by layer.
    """
    if stacked:
        return jax.vmap(lambda k, a_, b_: merge(k, a_, b_, scale))(kernel, a, b)
    delta = jnp.tensordot(jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32), axes=1)
    return (jnp.asarray(kernel, jnp.float32) + scale * delta).astype(jnp.asarray(kernel).dtype)
