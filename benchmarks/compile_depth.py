"""Compile time of the train step at 24 layers against 2 layers, in the same run.

Layers stacked under one `nnx.scan` are traced and compiled once, so depth should barely
move compile time (goal: 24 layers <= 1.5x of 2 layers). With --unrolled the 24-layer
model is also compiled with `model.scan_layers=false`, the baseline a scan avoids.
The persistent compilation cache is off here: every compile is real.

    ./launch.sh run benchmarks.compile_depth [--config=configs/bert_tiny.py] [--unrolled]
"""

from __future__ import annotations

import time

import jax
from absl import app, flags

from train.preflight import memory_report
from train.config import load_config

_CONFIG = flags.DEFINE_string("config", "configs/bert_tiny.py", "Model and batch shape to compile.")
_UNROLLED = flags.DEFINE_bool("unrolled", False, "Also compile 24 unrolled layers.")
_REPEATS = flags.DEFINE_integer("repeats", 2, "Compiles per depth; the fastest is kept.")


def _compile_seconds(layers: int, scan: bool) -> float:
    """Trace, lower and compile the whole train step (state init is not included)."""
    config = load_config(_CONFIG.value, [f"model.num_layers={layers}", f"model.scan_layers={scan}",
                                         "mesh.shape=1,1,1"])
    best = float("inf")
    for _ in range(_REPEATS.value):
        jax.clear_caches()
        started = time.perf_counter()
        memory_report(config)
        best = min(best, time.perf_counter() - started)
    return best


def main(argv: list[str]) -> None:
    del argv
    jax.config.update("jax_enable_compilation_cache", False)
    shallow = _compile_seconds(2, scan=True)
    deep = _compile_seconds(24, scan=True)
    print(f"train-step compile, {_CONFIG.value}: 2 layers {shallow:.2f}s, 24 layers {deep:.2f}s "
          f"(scanned): ratio {deep / shallow:.2f}x (goal <= 1.5x)")
    if _UNROLLED.value:
        unrolled = _compile_seconds(24, scan=False)
        print(f"24 layers unrolled {unrolled:.2f}s: {unrolled / deep:.2f}x the scanned 24 layers")


if __name__ == "__main__":
    app.run(main)
