"""This machine's matmul roof: FLOP/s of large square products under jax.jit, per device.

MFU figures elsewhere divide by this number when no chip datasheet applies (CPUs).

    ./launch.sh run benchmarks.peak_flops [--size=2048] [--dtypes=float32,bfloat16]
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
from absl import app, flags

_SIZE = flags.DEFINE_integer("size", 2048, "Side of the square matrices.")
_DTYPES = flags.DEFINE_list("dtypes", ["float32", "bfloat16"], "Element types to time.")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed rounds; the best is reported.")


def matmul_flops_per_sec(size: int = 2048, dtype: str = "float32", repeats: int = 5,
                         chain: int = 8) -> float:
    """Best FLOP/s over `repeats` rounds of `chain` dependent [size, size] products on one device."""
    a = jax.random.normal(jax.random.key(0), (size, size), jnp.float32).astype(dtype)
    b = jax.random.normal(jax.random.key(1), (size, size), jnp.float32).astype(dtype) / size ** 0.5

    @jax.jit
    def products(x):
        for _ in range(chain):  # dependent products: no work can be skipped or overlapped away
            x = jnp.dot(x, b, preferred_element_type=jnp.float32).astype(dtype)
        return x

    return 2 * size ** 3 * chain / best_seconds(lambda: products(a).block_until_ready(), repeats)


def best_seconds(run, repeats: int) -> float:
    """The fastest of `repeats` timed calls of run(), after one untimed call (compile, warm-up)."""
    run()
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - started)
    return best


def main(argv: list[str]) -> None:
    del argv
    device = jax.devices()[0]
    print(f"device: {device.device_kind} ({jax.default_backend()}), {jax.device_count()} devices")
    baseline = None
    for dtype in _DTYPES.value:
        flops = matmul_flops_per_sec(_SIZE.value, dtype, _REPEATS.value)
        baseline = baseline or flops
        print(f"{dtype:>9} matmul {_SIZE.value}^3: {flops / 1e9:8.1f} GFLOP/s per device "
              f"({flops / baseline:.2f}x {_DTYPES.value[0]})")


if __name__ == "__main__":
    app.run(main)
