"""The precision policy, set in one place: projections in the compute dtype, float32 accumulation.

Parameters stay in `param_dtype` (float32) and activations flow in `dtype` (bfloat16 for
mixed precision). Every projection of the model goes through `project` (the `Linear` and
`Einsum` modules below are nnx's, with the same parameters, calling it): both operands in
the compute dtype, the product accumulated in float32 with the bias added there, the
result returned in the compute dtype (float32 for logits). Softmax, norms and the loss
run in float32 at their call sites.

XLA:CPU (jax 0.10) sends a bfloat16 product to its bf16 (AMX) kernels in one form only:
row-major [M, K] x [K, N] with a float32 result. Any other form -- a transposed operand,
which autodiff makes for both backward products of every projection -- is upcast to
float32 first and runs ~6x slower (benchmarks/bf16_matmul.py). And the bias gradient, a
column sum of a converted operand, becomes a reduce-window that runs at ~0.5 GB/s. So on
a CPU with a bfloat16 compute dtype a projection carries its own VJP: its backward
products are written in that form over physically transposed copies, and the bias
gradient is a product with a ones matrix. Attention's six products (two forward, four
backward) get the same treatment in `cpu_bf16_attention`, which model/attention.py's XLA
path takes on a CPU in bfloat16. On TPU and GPU, and in float32, a projection is a plain
dot_general and attention the einsum path: their compilers choose layouts themselves, and
the copies would only cost.

Decoding reads kernels held [*out, *in] in float32, bfloat16 or int8 (`WEIGHT_DTYPES`;
model/decode_kernels.py holds them) through `project_held`, under the same policy: the
compute dtype is float32 for float32 weights and bfloat16 otherwise (`compute_dtype`),
products accumulate in float32. A decode step multiplies a few rows by every weight, so
its cost is the bytes of weights it reads, and the forms differ from training's:

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

import functools
import math

import jax
import jax.numpy as jnp
import qwix
from flax import nnx
from jax import lax

from model.dropout import dropout

_F32 = jnp.float32
_ONES_ROWS = 8  # a column sum as [8, M] x [M, N]: XLA:CPU's bf16 kernels take no M=1 product
WEIGHT_DTYPES = ("float32", "bfloat16", "int8")  # how decoding holds kernels (`project_held`)
_ROWS_BY_KERNEL = (((1,), (1,)), ((), ()))  # [M, K] x [N, K] -> [M, N] (and [N, K] x [M, K] -> [N, M])


class Linear(nnx.Linear):
    """nnx.Linear (same parameters and constructor) under the precision policy."""

    def __call__(self, inputs: jax.Array, out_sharding=None) -> jax.Array:
        bias = None if self.bias is None else self.bias[...]
        return project(inputs, self.kernel[...], 1, bias=bias, dtype=self.dtype or inputs.dtype)


class Einsum(nnx.Einsum):
    """nnx.Einsum for projections ('bld,dhk->blhk', 'blhk,hkd->bld') under the precision policy."""

    def __call__(self, inputs: jax.Array, einsum_str: str | None = None, out_sharding=None) -> jax.Array:
        contract = _projection_contract(einsum_str or self.einsum_str)
        if contract is None:
            return super().__call__(inputs, einsum_str, out_sharding)
        bias = None if self.bias is None else self.bias[...]
        return project(inputs, self.kernel[...], contract, bias=bias, dtype=self.dtype or inputs.dtype)


def _projection_contract(subscripts: str) -> int | None:
    """How many trailing input axes meet the kernel's leading axes, if the einsum is a projection."""
    inputs, _, out = subscripts.replace(" ", "").partition("->")
    left, _, right = inputs.partition(",")
    contract = (len(left) + len(right) - len(out)) // 2
    if (0 < contract and "." not in subscripts and left[len(left) - contract:] == right[:contract]
            and out == left[:len(left) - contract] + right[contract:]):
        return contract
    return None


def project(x: jax.Array, kernel: jax.Array, contract: int = 1, *, bias: jax.Array | None = None,
            dtype=None, kernel_transposed: bool = False, out_dtype=None) -> jax.Array:
    """x [..., K...] . kernel [K..., N...] (+ bias [N...]) in `dtype`, accumulated in float32.

    kernel_transposed reads a [N, K] kernel (the tied word table as the output projection).
    The result is in `dtype` (default: x's) unless out_dtype is given: logits keep float32.
    """
    dtype = jnp.dtype(dtype or x.dtype)
    out_dtype = jnp.dtype(out_dtype or dtype)
    if kernel_transposed:
        out_dims, in_dims = kernel.shape[:1], kernel.shape[1:]
    else:
        in_dims, out_dims = kernel.shape[:contract], kernel.shape[contract:]
    lead = x.shape[:x.ndim - len(in_dims)]
    x2 = x.astype(dtype).reshape(-1, math.prod(in_dims))
    w2 = kernel.reshape((math.prod(out_dims), -1) if kernel_transposed else (-1, math.prod(out_dims)))
    b = None if bias is None else bias.reshape(-1)
    if cpu_bf16_kernels(dtype):  # the parameters enter in their own dtype: their gradients stay float32
        y = _cpu_bf16_project(x2, w2, b, kernel_transposed, out_dtype)
    else:
        dims = (((1,), (1,)), ((), ())) if kernel_transposed else (((1,), (0,)), ((), ()))
        y = lax.dot_general(x2, w2.astype(dtype), dims, preferred_element_type=_F32)
        y = (y if b is None else y + b.astype(dtype).astype(_F32)).astype(out_dtype)
    return y.reshape(*lead, *out_dims)


def cpu_bf16_kernels(dtype) -> bool:
    """Whether projections in dtype take the CPU bf16 path (benchmarks switch it off to compare)."""
    return jnp.dtype(dtype) == jnp.bfloat16 and jax.default_backend() == "cpu"


def _row_major_t(a: jax.Array) -> jax.Array:
    """a.T as a physically transposed, row-major copy.

    A plain transpose becomes a layout change (a column-major view) that XLA:CPU's bf16
    kernels refuse; transposing with a trailing unit axis makes XLA write the copy.
    """
    return jnp.transpose(a[:, :, None], (1, 0, 2)).reshape(a.shape[1], a.shape[0])


def _canonical(a: jax.Array, b: jax.Array) -> jax.Array:
    """[M, K] x [K, N] -> float32 [M, N]: the one form XLA:CPU runs on its bf16 kernels."""
    return jnp.dot(a, b, preferred_element_type=_F32)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _cpu_bf16_project(x, w, b, w_transposed: bool, out_dtype):
    """x [M, K] . w ([K, N], or [N, K] if w_transposed) + b [N], bf16 with float32 accumulation."""
    return _cpu_bf16_forward(x, w, b, w_transposed, out_dtype)[0]


def _cpu_bf16_forward(x, w, b, w_transposed, out_dtype):
    w_kn = w.astype(x.dtype)
    w_kn = _row_major_t(w_kn) if w_transposed else w_kn
    y = _canonical(x, w_kn)
    y = y if b is None else y + b.astype(x.dtype).astype(_F32)
    return y.astype(out_dtype), (x, w_kn, jnp.zeros((), w.dtype), b)


def _cpu_bf16_backward(w_transposed, out_dtype, residuals, g):
    x, w_kn, w_type, b = residuals  # w_kn [K, N] in the compute dtype; w_type a scalar of w's dtype
    g = g.astype(x.dtype)  # float32 logits' cotangents enter the bf16 products too
    dx = _canonical(g, _row_major_t(w_kn)).astype(x.dtype)  # [M, N] x [N, K]
    dw = _canonical(_row_major_t(g), x) if w_transposed else _canonical(_row_major_t(x), g)
    db = None
    if b is not None:
        db = _canonical(jnp.ones((_ONES_ROWS, g.shape[0]), g.dtype), g)[0].astype(b.dtype)
    return dx, dw.astype(w_type.dtype), db


_cpu_bf16_project.defvjp(_cpu_bf16_forward, _cpu_bf16_backward)


# Attention's products on XLA:CPU in bf16: the same rule as a projection's. Autodiff of the
# einsum form gives four backward products with transposed operands and a bf16 product
# whose result is bf16; XLA:CPU ran all five in float32 (~6 ms each at the ~100M Llama
# shape where a row-major bf16 product takes ~1.5). Here every product is a batched
# row-major [n, M, K] x [n, K, N] -> float32 over copies laid out for it, one batch entry
# per (row, kv head) with that head's query group stacked along M.

def _heads_first(a: jax.Array, groups: int) -> jax.Array:
    """[B, L, K*G, D] -> row-major [B*K, G*L, D] (a physical copy: the trailing unit axis, as in `_row_major_t`)."""
    b, length, heads, d = a.shape
    a = a.reshape(b, length, heads // groups, groups, d, 1)
    return jnp.transpose(a, (0, 2, 3, 1, 4, 5)).reshape(b * heads // groups, groups * length, d)


def _heads_last(a: jax.Array, batch: int, groups: int) -> jax.Array:
    """`_heads_first`'s inverse: [B*K, G*L, D] -> [B, L, K*G, D]."""
    n, rows, d = a.shape
    a = a.reshape(batch, n // batch, groups, rows // groups, d, 1)
    return jnp.transpose(a, (0, 3, 1, 2, 4, 5)).reshape(batch, rows // groups, n // batch * groups, d)


def _batched_t(a: jax.Array) -> jax.Array:
    """[n, M, N] -> row-major [n, N, M] (a physical copy)."""
    return jnp.transpose(a[..., None], (0, 2, 1, 3)).reshape(a.shape[0], a.shape[2], a.shape[1])


def _bmm(a: jax.Array, b: jax.Array) -> jax.Array:
    """[n, M, K] x [n, K, N] -> float32 [n, M, N]."""
    return lax.dot_general(a, b, (((2,), (1,)), ((0,), (0,))), preferred_element_type=_F32)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def cpu_bf16_attention(q, k, v, mask, masked_logit: float, dropout_rate: float, dropout_key=None):
    """softmax(q k^T / sqrt(d)) v with bf16 products in XLA:CPU's row-major form, softmax in float32.

    q [B, L, H, D], k/v [B, S, K, D] (H a multiple of K), mask broadcastable to [B, K, H/K, L, S];
    probabilities drop as model/dropout.py drops them (its mask is a function of the key, so the
    backward pass drops the same entries).
    """
    return _attention_forward(q, k, v, mask, masked_logit, dropout_rate, dropout_key)[0]


def _attention_forward(q, k, v, mask, masked_logit, dropout_rate, dropout_key):
    batch, length, heads, d = q.shape
    kv_heads, groups = k.shape[2], heads // k.shape[2]
    q_rows = _heads_first(q, groups)  # [B*K, G*L, D]
    k_cols = _batched_t(_heads_first(k, 1))  # [B*K, D, S]
    v_rows = _heads_first(v, 1)  # [B*K, S, D]
    scores = (_bmm(q_rows, k_cols) * d ** -0.5).reshape(batch, kv_heads, groups, length, -1)
    probs = jax.nn.softmax(jnp.where(mask, scores, masked_logit), axis=-1)
    kept = dropout(probs, dropout_rate, dropout_key).astype(q.dtype)  # [B, K, G, L, S], as saved
    out = _bmm(kept.reshape(batch * kv_heads, groups * length, -1), v_rows)
    return _heads_last(out.astype(q.dtype), batch, groups), (q_rows, k_cols, v_rows, probs, kept, dropout_key)


def _attention_backward(masked_logit, dropout_rate, residuals, g):
    q_rows, k_cols, v_rows, probs, kept, dropout_key = residuals
    batch, kv_heads, groups, length, _ = probs.shape
    d = q_rows.shape[-1]
    g_rows = _heads_first(g.astype(q_rows.dtype), groups)  # [B*K, G*L, D]
    # dv and dk as the transposes of [D, G*L] x [G*L, S] products: the transposed copies are
    # then of [G*L, D] operands and [D, S] results, not of the [G*L, S] probabilities.
    dv = _batched_t(_bmm(_batched_t(g_rows), kept.reshape(batch * kv_heads, groups * length, -1)))  # [B*K, S, D]
    d_kept = _bmm(g_rows, _batched_t(v_rows)).reshape(probs.shape)
    d_probs = dropout(d_kept, dropout_rate, dropout_key)  # the same mask and scale: dropout is linear
    d_scores = probs * (d_probs - jnp.sum(d_probs * probs, axis=-1, keepdims=True)) * d ** -0.5
    d_scores = d_scores.astype(q_rows.dtype).reshape(batch * kv_heads, groups * length, -1)
    dq = _bmm(d_scores, _batched_t(k_cols))  # [B*K, G*L, D]
    dk = _batched_t(_bmm(_batched_t(q_rows), d_scores))  # [B*K, S, D]
    dtype = q_rows.dtype
    return (_heads_last(dq.astype(dtype), batch, groups), _heads_last(dk.astype(dtype), batch, 1),
            _heads_last(dv.astype(dtype), batch, 1), None, None)


cpu_bf16_attention.defvjp(_attention_forward, _attention_backward)


# Decoding: kernels held [*out, *in] in float32, bfloat16 or int8 (see the module docstring).

def check_weight_dtype(name: str) -> str:
    """`name` if it is a decoding weight dtype, else a one-line error naming the accepted ones."""
    if name not in WEIGHT_DTYPES:
        raise ValueError(f"decoding dtype {name!r}; accepted: {', '.join(WEIGHT_DTYPES)}")
    return name


def compute_dtype(weights: str) -> str:
    """The activations' dtype for kernels held in `weights`: float32 for float32, else bfloat16."""
    return "float32" if check_weight_dtype(weights) == "float32" else "bfloat16"


def project_held(x: jax.Array, kernel: jax.Array, in_dims: int, weights: str, scale: jax.Array | None = None,
                 out_dtype=None) -> jax.Array:
    """x [..., *in] . kernel [*out, *in] held in `weights` (int8: times `scale` [*out]), accumulated
    in float32; the result in out_dtype (default: the compute dtype of `weights`)."""
    out_shape = kernel.shape[:kernel.ndim - in_dims]
    # Both sides in 2-D: given the multi-axis einsum, XLA swapped the float32 operands
    # back and copied the kernel at every step.
    w = kernel.reshape(math.prod(out_shape), -1)  # [N, K]
    rows = x.reshape(-1, w.shape[1])
    if check_weight_dtype(weights) == "float32":
        y = jnp.einsum("nd,md->nm", w, rows.astype(_F32)).T
    elif weights == "bfloat16":
        y = jax.lax.platform_dependent(w, rows.astype(jnp.bfloat16), cpu=_bf16_cpu, default=_bf16)
    else:
        y = jax.lax.platform_dependent(w, scale.reshape(-1, 1), rows, cpu=_int8_cpu, default=_int8)
    y = y.astype(out_dtype or compute_dtype(weights))
    return y.reshape(*x.shape[:x.ndim - in_dims], *out_shape)


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
