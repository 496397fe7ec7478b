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
gradient is a product with a ones matrix. On TPU and GPU, and in float32, a projection is
a plain dot_general: their compilers choose layouts themselves, and the copies would only
cost.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from flax import nnx
from jax import lax

_F32 = jnp.float32
_ONES_ROWS = 8  # a column sum as [8, M] x [M, N]: XLA:CPU's bf16 kernels take no M=1 product


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
