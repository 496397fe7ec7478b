"""Which bf16 matmul forms reach XLA:CPU's bf16 kernels: each form's time against float32's, in one run.

model/precision.py rests on this: on XLA:CPU (jax 0.10.2) only a row-major [M, K] x [K, N]
product with a float32 result runs on the bf16 (AMX) kernels; a bf16 result, or an
operand transposed as autodiff's backward products have them, is upcast to float32 first.
A physically transposed copy (precision._row_major_t) brings such a product back to the
fast form; its cost is included in the `via a transposed copy` rows. The shapes are one
BERT-base MLP projection at batch 8 x 128.

    ./launch.sh run benchmarks.bf16_matmul [--repeats=7]
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
from absl import app, flags

from model.precision import _row_major_t

_REPEATS = flags.DEFINE_integer("repeats", 7, "Timed calls per form; the best is reported.")
M, K, N = 1024, 768, 3072
F32 = jnp.float32


def _best(fn, *args) -> float:
    fn = jax.jit(fn)
    jax.block_until_ready(fn(*args))
    best = float("inf")
    for _ in range(_REPEATS.value):
        started = time.perf_counter()
        jax.block_until_ready(fn(*args))
        best = min(best, time.perf_counter() - started)
    return best


def main(argv: list[str]) -> None:
    del argv
    keys = jax.random.split(jax.random.key(0), 3)
    forms = {
        "x @ w        (forward)": (lambda x, w, g: jnp.dot(x, w, preferred_element_type=F32), "x w"),
        "x @ w, bf16 result": (lambda x, w, g: jnp.dot(x, w), "x w"),
        "g @ w.T      (backward, dx)": (lambda x, w, g: jnp.dot(g, w.T, preferred_element_type=F32), "g w"),
        "g @ w.T via a transposed copy": (lambda x, w, g: jnp.dot(g, _row_major_t(w), preferred_element_type=F32), "g w"),
        "x.T @ g      (backward, dw)": (lambda x, w, g: jnp.dot(x.T, g, preferred_element_type=F32), "x g"),
        "x.T @ g via a transposed copy": (lambda x, w, g: jnp.dot(_row_major_t(x), g, preferred_element_type=F32), "x g"),
    }
    arrays = {dtype: (jax.random.normal(keys[0], (M, K)).astype(dtype), jax.random.normal(keys[1], (K, N)).astype(dtype),
                      jax.random.normal(keys[2], (M, N)).astype(dtype)) for dtype in (F32, jnp.bfloat16)}
    flops = 2 * M * K * N
    print(f"[{M}, {K}] x [{K}, {N}] products on {jax.devices()[0].device_kind}; best of {_REPEATS.value}")
    for name, (fn, _) in forms.items():
        f32 = _best(fn, *arrays[F32])
        bf16 = _best(fn, *arrays[jnp.bfloat16])
        print(f"  {name:32s} fp32 {f32 * 1e3:6.2f} ms  bf16 {bf16 * 1e3:6.2f} ms  "
              f"({flops / bf16 / 1e9:6.0f} GFLOP/s)  bf16 speed-up {f32 / bf16:4.2f}x")


if __name__ == "__main__":
    app.run(main)
