"""The decoding layout's kernels, held in float32, bfloat16 or int8 for `precision.project_held`.

A decode step multiplies a few token rows by every weight, so its cost is the bytes of
weights it reads: bfloat16 halves them, int8 (a float32 scale per output channel, absmax,
quantized with qwix) quarters them. A `DecodeKernel` holds a trained kernel [*out, *in] in
one of those dtypes (with its scale for int8) and computes x [..., *in] -> [..., *out]
through `precision.project_held`, where the decoding dtype policy and the product forms
XLA:CPU needs are decided, beside training's (model/precision.py).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import qwix
from flax import nnx

from model.precision import check_weight_dtype, project_held
from model.sharding import LogicalNames, constrain, named_param

_F32 = jnp.float32


class DecodeKernel(nnx.Module):
    """A kernel [*out, *in] (float32 from training) held for decoding in `weights` (see above)."""

    def __init__(self, kernel: jax.Array, names: LogicalNames, in_dims: int, weights: str):
        self.in_dims = in_dims
        self.weights = check_weight_dtype(weights)
        out_dims = kernel.ndim - in_dims
        if weights == "int8":
            q = qwix.quantize(kernel.astype(_F32), jnp.int8, channelwise_axes=tuple(range(out_dims)))
            self.kernel = named_param(q.qvalue, names)
            self.scale = named_param(q.scale.reshape(kernel.shape[:out_dims]), names[:out_dims])
        else:
            self.kernel = named_param(kernel.astype(weights), names)
            self.scale = None

    def rows(self, ids: jax.Array) -> jax.Array:
        """Rows of a [rows, features] kernel as float32 (the tied word table's lookup)."""
        # Gathered whole along the features first, as model/embeddings.py's lookup_rows.
        rows = _gather_rows(constrain(self.kernel[...], ("act_vocab", None)), ids).astype(_F32)
        if self.scale is None:
            return rows
        return rows * jnp.take(constrain(self.scale[...], ("act_vocab",)), ids, axis=0)[..., None]

    def __call__(self, x: jax.Array, out_dtype=None) -> jax.Array:
        """x [..., *in] -> [..., *out] in out_dtype (default: the compute dtype), accumulated in float32."""
        scale = None if self.scale is None else self.scale[...]
        return project_held(x, self.kernel[...], self.in_dims, self.weights, scale, out_dtype)


def _gather_rows(table: jax.Array, ids: jax.Array) -> jax.Array:
    """table[ids]; a bfloat16 table is gathered as its 16-bit patterns.

    XLA:CPU gathers bfloat16 through float32: it converted the whole table to float32 once
    per call (hoisted out of the decoding loop), a second copy of the table every call.
    """
    if table.dtype != jnp.bfloat16:
        return jnp.take(table, ids, axis=0)
    bits = jnp.take(jax.lax.bitcast_convert_type(table, jnp.uint16), ids, axis=0)
    return jax.lax.bitcast_convert_type(bits, jnp.bfloat16)
