"""How much of a train step is matrix products, at XLA:CPU's speed and at PyTorch's, in one run.

Issue 20 asks for meshlm's bf16 train step at >= 1.3x PyTorch autocast. This script shows
how far the kernels alone allow it: it compiles meshlm's train step (the same as
benchmarks/train_vs_torch.py), reads every matrix product out of the optimized HLO, and
times each one in isolation twice, in the form the step runs it (operand shapes, dtypes
and contracting dims as XLA:CPU compiled them): once under XLA:CPU (its bf16 products run
on YNNPACK) and once as the same-sized torch.mm / torch.bmm in the same dtypes (PyTorch's
oneDNN). The products' sum is each side's floor for a step that did nothing else. Then
both real steps run side by side and the rest of each step (step - floor) is printed:
norms, softmax, rotary, the loss, the copies and converts, AdamW. Last, one meshlm step
runs under jax.profiler: how long some product was running in it, and how long none was.

    ./launch.sh run benchmarks.train_step_floor --model=llama --dtype=bfloat16 [--rounds=5]

Its flags are benchmarks/train_vs_torch.py's (--rounds: timed calls of each product and
steps of each side; the best is kept).

Needs the `hf` extra (torch, transformers).
"""

from __future__ import annotations

import collections
import gzip
import json
import math
import pathlib
import re
import shutil
import tempfile

import jax
import jax.numpy as jnp
from absl import app

# train_vs_torch's flags (--model, --dtype, --batch, --seq_len, --rounds) are this script's too.
from benchmarks.peak_flops import best_seconds
from benchmarks.train_vs_torch import _BATCH, _DTYPE, _ROUNDS, sides_from_flags

_TARGET = 1.3  # the goal: meshlm's step at 1.3x PyTorch's speed

_DTYPES = {"bf16": "bfloat16", "f16": "float16", "f32": "float32", "s8": "int8", "s32": "int32", "u8": "uint8"}
_DEF = re.compile(r"^\s*(?:ROOT )?(%[\w.\-]+) = (\w+)\[([\d,]*)\]")
_DOT = re.compile(r"= (\w+)\[[\d,]*\]\{[^}]*\} dot\((%[\w.\-]+), (%[\w.\-]+)\), ([^%]*?)(?:, metadata|, backend|$)")


def step_products(hlo: str) -> collections.Counter:
    """Every dot of an optimized HLO module: (out dtype, lhs (dtype, shape), rhs (dtype, shape), dims) -> count."""
    products: collections.Counter = collections.Counter()
    for body in re.split(r"\n}\n", hlo):
        shapes = {}
        for line in body.split("\n"):
            if match := _DEF.match(line):
                shapes[match[1]] = (match[2], tuple(int(n) for n in match[3].split(",") if n))
        for line in body.split("\n"):
            if " dot(" in line and (match := _DOT.search(line)):
                dims = tuple((key, tuple(int(n) for n in value.split(",") if n))
                             for key, value in re.findall(r"(\w+_dims)=\{([\d,]*)\}", match[4]))
                products[(match[1], shapes[match[2]], shapes[match[3]], dims)] += 1
    return products


def _bmm_sizes(lhs: tuple, rhs: tuple, dims: dict) -> tuple[int, int, int, int]:
    """(batch, M, K, N) of a dot_general."""
    batch = math.prod(lhs[i] for i in dims.get("lhs_batch_dims", ()))
    k = math.prod(lhs[i] for i in dims["lhs_contracting_dims"])
    return batch, math.prod(lhs) // batch // k, k, math.prod(rhs) // batch // k


def time_product(product, torch) -> tuple[float, float, float]:
    """(XLA:CPU seconds, PyTorch seconds, FLOPs) of one product in isolation."""
    out, (lhs_type, lhs), (rhs_type, rhs), dims = product
    dims = dict(dims)
    numbers = (((dims["lhs_contracting_dims"]), dims["rhs_contracting_dims"]),
               (dims.get("lhs_batch_dims", ()), dims.get("rhs_batch_dims", ())))
    a = jnp.ones(lhs, _DTYPES[lhs_type])
    b = jnp.ones(rhs, _DTYPES[rhs_type])
    xla = jax.jit(lambda a, b: jax.lax.dot_general(a, b, numbers, preferred_element_type=_DTYPES[out]))
    xla_seconds = best_seconds(lambda: xla(a, b).block_until_ready(), _ROUNDS.value)
    batch, m, k, n = _bmm_sizes(lhs, rhs, dims)
    # torch has no integer bmm on CPU: an integer product (a one-hot gather) is timed in float32 there.
    dtype = getattr(torch, _DTYPES[lhs_type]) if lhs_type in ("bf16", "f16", "f32") else torch.float32
    ta, tb = torch.ones(batch, m, k, dtype=dtype), torch.ones(batch, k, n, dtype=dtype)
    torch_seconds = best_seconds(lambda: torch.bmm(ta, tb) if batch > 1 else torch.mm(ta[0], tb[0]), _ROUNDS.value)
    return xla_seconds, torch_seconds, 2.0 * batch * m * k * n


def traced_step(jax_side) -> tuple[float, float]:
    """(seconds, seconds during which a product ran) of one meshlm step under jax.profiler.

    A product is an XLA:CPU op event naming a dot or a YNNPACK fusion (XLA:CPU sends its
    bf16 and most float32 products there); the other ops are norms, copies, converts,
    softmax, the loss and the optimizer, and they may overlap a product on the other core.
    """
    for warm in (True, False):  # the first traced step runs at a fraction of the speed: left out
        folder = tempfile.mkdtemp()
        with jax.profiler.trace(folder):
            jax_side.run(1)
        if warm:
            shutil.rmtree(folder)
    try:
        trace_file = next(pathlib.Path(folder).rglob("*.trace.json.gz"))
        events = json.loads(gzip.decompress(trace_file.read_bytes()))["traceEvents"]
    finally:
        shutil.rmtree(folder)
    ops = [e for e in events if e.get("ph") == "X" and "hlo_op" in e.get("args", {})]
    start, end = min(e["ts"] for e in ops), max(e["ts"] + e["dur"] for e in ops)
    spans = sorted((e["ts"], e["ts"] + e["dur"]) for e in ops if re.search(r"dot|ynn", e["name"]))
    covered, reach = 0.0, start
    for begin, finish in spans:  # the union of the product spans
        covered += max(0.0, finish - max(begin, reach))
        reach = max(reach, finish)
    return (end - start) / 1e6, covered / 1e6


def main(argv: list[str]) -> None:
    del argv
    import torch

    config, seq_len, jax_side, torch_side = sides_from_flags()
    products = step_products(jax_side.compiled_text())
    print(f"{config.name}, batch {_BATCH.value} x {seq_len}, {_DTYPE.value} compute: {sum(products.values())} products "
          f"in meshlm's compiled step ({len(products)} distinct), each timed alone, best of {_ROUNDS.value}")
    floors = {"XLA:CPU": 0.0, "PyTorch": 0.0}
    flops = 0.0
    rows = []
    for product, count in products.items():
        xla_s, torch_s, product_flops = time_product(product, torch)
        floors["XLA:CPU"] += count * xla_s
        floors["PyTorch"] += count * torch_s
        flops += count * product_flops
        rows.append((count * xla_s, count, product, xla_s, torch_s, product_flops))
    for total, count, (out, lhs, rhs, _), xla_s, torch_s, product_flops in sorted(rows, reverse=True)[:12]:
        print(f"  {count:3d} x {lhs[0]}{list(lhs[1])} . {rhs[0]}{list(rhs[1])} -> {out}: XLA:CPU {xla_s * 1e3:6.2f} ms "
              f"({product_flops / xla_s / 1e9:5.0f} GFLOP/s)  PyTorch {torch_s * 1e3:6.2f} ms "
              f"({product_flops / torch_s / 1e9:5.0f} GFLOP/s)")
    for side in (jax_side, torch_side):
        side.run(2)
    steps = {"meshlm": min(jax_side.run(1) for _ in range(_ROUNDS.value)),
             "pytorch": min(torch_side.run(1) for _ in range(_ROUNDS.value))}
    print(f"products: {flops / 1e12:.3f} TFLOP a step")
    for (name, step), (kernels, floor) in zip(steps.items(), floors.items()):
        print(f"  {name:8s} step {step:6.3f} s = products at {kernels}'s speed {floor:6.3f} s "
              f"({flops / floor / 1e9:4.0f} GFLOP/s) + the rest {step - floor:6.3f} s")
    goal = steps["pytorch"] / _TARGET
    print(f"meshlm / pytorch: {steps['pytorch'] / steps['meshlm']:.2f}x. {_TARGET}x would be a {goal:.3f} s step: "
          f"XLA:CPU's products alone take {floors['XLA:CPU']:.3f} s ({floors['XLA:CPU'] / goal:.0%} of it), "
          f"leaving {goal - floors['XLA:CPU']:.3f} s for the rest, which takes "
          f"{steps['meshlm'] - floors['XLA:CPU']:.3f} s "
          f"in meshlm and {steps['pytorch'] - floors['PyTorch']:.3f} s in PyTorch")
    print(f"XLA:CPU's products / PyTorch's (same shapes): {floors['XLA:CPU'] / floors['PyTorch']:.2f}x the time")
    traced, in_products = traced_step(jax_side)
    print(f"meshlm's step under jax.profiler: {traced:.3f} s, a product running during {in_products:.3f} s of it "
          f"(alone they took {floors['XLA:CPU']:.3f} s), none during {traced - in_products:.3f} s")


if __name__ == "__main__":
    app.run(main)
