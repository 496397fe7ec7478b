"""Where a decode step's time goes on XLA:CPU: one matrix product per kernel, in each weight dtype.

A decode step multiplies one or a few rows by every kernel, so it should run at the rate
memory delivers the kernels. This times the products model/precision.py's `project_held` chooses
between (and qwix's own weight-only and w8a8 products, as a model quantized by qwix would
run them), on the benchmark decoder's widest layer kernel (gate/up: [4096, 768]), in two
settings: one 0.8 MB kernel [512, 768] multiplied 64 times in a row (it stays in cache: the
product's own cost) and 16 different [4096, 768] kernels (the kernels come from memory).
Each line prints the kernel bytes read per second, so a form that does extra work per byte
(a converted copy of the kernel, a repacking) shows below the memory rate, and the
from-memory rate as a share of benchmarks/decode.py's bandwidth roof (its probe, measured
in the same run): a decode loop made of nothing but these products reaches that share at
most.

    .venv/bin/python -m benchmarks.decode_products [--rounds=10]
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np
import qwix
from absl import app, flags

from benchmarks.decode import bandwidth_probe

_ROUNDS = flags.DEFINE_integer("rounds", 10, "Timed rounds; the best of each form is kept.")
F32, BF16, I8 = jnp.float32, jnp.bfloat16, jnp.int8
ROWS_BY_KERNEL = (((1,), (1,)), ((), ()))


def _quantized_rows(x: jax.Array) -> jax.Array:
    return jnp.round(x * 100.0).astype(I8)


def _qwix_weight(w: jax.Array) -> qwix.QArray:
    """An int8 [N, K] kernel as qwix holds it: a float32 scale per output channel."""
    return qwix.QArray(w, jnp.full((w.shape[0], 1), 0.01, F32))


def _kernel_first(w: jax.Array, rows: jax.Array, accumulate=F32) -> jax.Array:
    """[N, K] x [M, K] -> [M, N] with the kernel as the first operand, as model/precision.py's project_held writes it."""
    y = jax.lax.dot_general(w, rows, ROWS_BY_KERNEL, preferred_element_type=accumulate)
    return jax.lax.optimization_barrier(y).T.astype(F32)


# name: (kernel dtype, rows, product of rows [M, K] and kernel [N, K] -> float32 [M, N])
FORMS = {
    "float32, 1 row, XLA's GEMV (the float32 layout)": (
        F32, 1, lambda w, x: jnp.einsum("nd,md->nm", w, x).T),
    "bfloat16, 1 row: XLA upcasts (a float32 copy of the kernel)": (
        BF16, 1, lambda w, x: jax.lax.dot_general(x.astype(BF16), w, ROWS_BY_KERNEL, preferred_element_type=F32)),
    "bfloat16, 2 rows, kernel second: YNNPACK repacks it": (
        BF16, 2, lambda w, x: jax.lax.dot_general(x.astype(BF16), w, ROWS_BY_KERNEL, preferred_element_type=F32)),
    "bfloat16, 2 rows, kernel first (the bfloat16 layout)": (
        BF16, 2, lambda w, x: _kernel_first(w, x.astype(BF16))),
    "int8 weight-only, 2 bf16 rows (a bf16 copy of the kernel)": (
        I8, 2, lambda w, x: _kernel_first(w.astype(BF16), x.astype(BF16))),
    "qwix weight-only (qwix.dot_general, bf16 rows x int8 QArray)": (
        I8, 2, lambda w, x: qwix.dot_general(x.astype(BF16), _qwix_weight(w), ROWS_BY_KERNEL,
                                             preferred_element_type=F32)),
    "qwix w8a8 (qwix.dot_general, int8 rows x int8 QArray)": (
        I8, 2, lambda w, x: qwix.dot_general(qwix.quantize(x, I8, channelwise_axes=(0,)), _qwix_weight(w),
                                             ROWS_BY_KERNEL, preferred_element_type=F32)),
    "int8 x int8 -> int32, 2 rows, kernel first (the int8 layout)": (
        I8, 2, lambda w, x: _kernel_first(w, _quantized_rows(x), jnp.int32)),
}


def _chain(kernels: list[jax.Array], x: jax.Array, product) -> jax.Array:
    """Dependent products (each row vector feeds the next), so none can be skipped or overlapped."""
    for w in kernels:
        y = product(w, x)
        x = x + jnp.tile(y, (1, -(-x.shape[1] // y.shape[1])))[:, :x.shape[1]] * 1e-3
    return x


def main(argv: list[str]) -> None:
    del argv
    rng = np.random.default_rng(0)
    runs = {}
    for name, (dtype, rows, product) in FORMS.items():
        cached = jnp.asarray(rng.standard_normal((512, 768)) * 30, dtype)
        streamed = [jnp.asarray(rng.standard_normal((4096, 768)) * 30, dtype) for _ in range(16)]
        x = jnp.asarray(rng.standard_normal((rows, 768)), F32)
        in_cache = jax.jit(lambda w, x, p=product: _chain([w] * 64, x, p))
        from_memory = jax.jit(lambda ws, x, p=product: _chain(ws, x, p))
        in_cache(cached, x).block_until_ready()
        from_memory(streamed, x).block_until_ready()
        runs[name] = ((in_cache, cached, 64 * cached.nbytes), (from_memory, streamed, 16 * streamed[0].nbytes), x)
    best = {name: [float("inf")] * 2 for name in runs}
    for _ in range(_ROUNDS.value):  # rounds alternate between the forms: the host's load moves them all
        for name, (first, second, x) in runs.items():
            for i, (fn, kernels, _) in enumerate((first, second)):
                started = time.perf_counter()
                fn(kernels, x).block_until_ready()
                best[name][i] = min(best[name][i], time.perf_counter() - started)
    roof = bandwidth_probe("bfloat16")(_ROUNDS.value)
    print(f"kernel bytes read per second, best of the rounds: in cache | from memory | from memory against "
          f"benchmarks.decode's bandwidth roof ({roof / 1e9:.1f} GB/s: its 256 MB probe, in this run)")
    for name, (first, second, _) in runs.items():
        streamed = second[2] / best[name][1]
        print(f"  {name:62s} {first[2] / best[name][0] / 1e9:6.1f} | {streamed / 1e9:5.1f} GB/s | "
              f"{streamed / roof:4.0%}")
    print("note: a shared 2-core CPU; other processes' load moves every figure, less so their ratios")


if __name__ == "__main__":
    app.run(main)
