"""The decoding layout's kernels, held in float32, bfloat16 or int8, and the one product that reads them.

A decode step multiplies a few token rows by every weight, so its cost is the bytes of
weights it reads: bfloat16 halves them, int8 (a float32 scale per output channel, absmax,
quantized with qwix) quarters them. A `DecodeKernel` holds a kernel [*out, *in] in one of
those dtypes and computes x [..., *in] -> [..., *out] with float32 accumulation:

    float32   W x^T over the [out, in] kernel, as the float32 layout was tuned
              (model/fused_block.py); XLA:CPU runs it as its own GEMV/GEMM.
    bfloat16  bfloat16 rows times the bfloat16 kernel, float32 result.
    int8      the rows times the int8 kernel, times each output channel's scale.

XLA:CPU (jax 0.10) facts that shape the bfloat16 and int8 forms (benchmarks/decode_products.py):
- It sends a bfloat16 or int8 product to its fast library (YNNPACK) only with two rows or
  more; one row is upcast to float32 with a float32 copy of the whole kernel per call
  (~4x slower than float32 itself). So on CPU a one-row product gets a second row.
- YNNPACK reads a kernel fastest as the product's first operand ([N, K] x [M, K] ->
  [N, M]); as the second it repacks the kernel at every call, at about the rate memory
  delivers it (~2x slower at 2 rows, ~1.5x at 8). XLA folds the transpose that follows a
  kernel-first product by swapping the operands back, so the result crosses an
  optimization barrier first.
- It never fuses an int8 -> bfloat16 convert into a product: weight-only int8 with
  bfloat16 rows writes a bfloat16 copy of the kernel at every step, slower than holding
  bfloat16. Its int8 x int8 -> int32 product does read the int8 kernel as it lies. So on
  CPU the rows are quantized too, in two int8 digits (qwix's per-row int8 quantization,
  then that of what it left): rows of ~15 bits, more than bfloat16's 8, so the result is
  the weight-only product to within ~1e-4, for one read of the int8 kernel (the digits are
  rows of one product; one row's two digits are the two rows YNNPACK needs).
On TPU and GPU, whose compilers fuse a convert into the product and choose operand layouts
themselves, int8 is plain weight-only (bfloat16 rows times the dequantized kernel: qwix's
path) and products are written plainly; `jax.lax.platform_dependent` picks the form when
the program is lowered, so an exported program carries both.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import qwix
from flax import nnx

from model.sharding import LogicalNames, constrain, named_param

WEIGHT_DTYPES = ("float32", "bfloat16", "int8")
_F32 = jnp.float32
_ROWS_BY_KERNEL = (((1,), (1,)), ((), ()))  # [M, K] x [N, K] -> [M, N] (and [N, K] x [M, K] -> [N, M])


def check_weight_dtype(name: str) -> str:
    """`name` if it is a decoding weight dtype, else a one-line error naming the accepted ones."""
    if name not in WEIGHT_DTYPES:
        raise ValueError(f"decoding dtype {name!r}; accepted: {', '.join(WEIGHT_DTYPES)}")
    return name


def compute_dtype(weights: str) -> str:
    """The activations' dtype for kernels held in `weights`: float32 for float32, else bfloat16."""
    return "float32" if check_weight_dtype(weights) == "float32" else "bfloat16"


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
        kernel = self.kernel[...]
        out_shape = kernel.shape[:kernel.ndim - self.in_dims]
        # Both sides in 2-D: given the multi-axis einsum, XLA swapped the float32 operands
        # back and copied the kernel at every step.
        w = kernel.reshape(math.prod(out_shape), -1)  # [N, K]
        rows = x.reshape(-1, w.shape[1])
        if self.weights == "float32":
            y = jnp.einsum("nd,md->nm", w, rows.astype(_F32)).T
        elif self.weights == "bfloat16":
            y = jax.lax.platform_dependent(w, rows.astype(jnp.bfloat16), cpu=_bf16_cpu, default=_bf16)
        else:
            scale = self.scale[...].reshape(-1, 1)
            y = jax.lax.platform_dependent(kernel.reshape(w.shape), scale, rows, cpu=_int8_cpu, default=_int8)
        y = y.astype(out_dtype or compute_dtype(self.weights))
        return y.reshape(*x.shape[:x.ndim - self.in_dims], *out_shape)


def _gather_rows(table: jax.Array, ids: jax.Array) -> jax.Array:
    """table[ids]; a bfloat16 table is gathered as its 16-bit patterns.

    XLA:CPU gathers bfloat16 through float32: it converted the whole table to float32 once
    per call (hoisted out of the decoding loop), a second copy of the table every call.
    """
    if table.dtype != jnp.bfloat16:
        return jnp.take(table, ids, axis=0)
    bits = jnp.take(jax.lax.bitcast_convert_type(table, jnp.uint16), ids, axis=0)
    return jax.lax.bitcast_convert_type(bits, jnp.bfloat16)


def _bf16(w: jax.Array, rows: jax.Array) -> jax.Array:
    """bf16 rows [M, K] x bf16 kernel [N, K] -> float32 [M, N]."""
    return jax.lax.dot_general(rows, w, _ROWS_BY_KERNEL, preferred_element_type=_F32)


def _bf16_cpu(w: jax.Array, rows: jax.Array) -> jax.Array:
    """`_bf16` as YNNPACK reads the kernel fastest: first operand, and at least two rows (see above)."""
    m = rows.shape[0]
    rows = jnp.concatenate([rows, rows]) if m == 1 else rows
    return _kernel_first(jax.lax.dot_general(w, rows, _ROWS_BY_KERNEL, preferred_element_type=_F32))[:m]


def _kernel_first(y_nm: jax.Array) -> jax.Array:
    """A kernel-first product's [N, M] result as [M, N], behind a barrier.

    Given the transpose, XLA would fold it into the product by swapping the operands
    back, and YNNPACK then repacks the kernel at every call (~2x slower: 2 rows from
    memory at 5.7 GB/s instead of 11.1; 8 rows 6.5 instead of 9.6).
    """
    return jax.lax.optimization_barrier(y_nm).T


def _int8(q: jax.Array, scale: jax.Array, rows: jax.Array) -> jax.Array:
    """Weight-only: bf16 rows [M, K] x the dequantized kernel (int8 [N, K] x scale [N, 1]) -> float32 [M, N]."""
    weight = qwix.QArray(q, scale.astype(jnp.bfloat16))
    return qwix.dot_general(rows.astype(jnp.bfloat16), weight, _ROWS_BY_KERNEL, preferred_element_type=_F32)


def _int8_cpu(q: jax.Array, scale: jax.Array, rows: jax.Array) -> jax.Array:
    """`_int8` as one int8 x int8 -> int32 product: the rows in two int8 digits (see above)."""
    rows = rows.astype(_F32)
    high = qwix.quantize(rows, jnp.int8, channelwise_axes=(0,))
    low = qwix.quantize(rows - qwix.dequantize(high), jnp.int8, channelwise_axes=(0,))
    digits = qwix.QArray(jnp.concatenate([high.qvalue, low.qvalue]), jnp.concatenate([high.scale, low.scale]))
    y = _kernel_first(qwix.dot_general(qwix.QArray(q, scale), digits, _ROWS_BY_KERNEL, preferred_element_type=_F32))
    m = rows.shape[0]
    return y[:m] + y[m:]
