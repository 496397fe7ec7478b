"""Where a decoding step's time goes: a jax.profiler trace of benchmarks.decode's loop, op by op.

Decodes with the ~100M Llama of benchmarks/decode.py (random weights; 32-token prompt,
--new tokens, greedy) under `jax.profiler.trace`, reads the Perfetto trace it writes, and
sums XLA:CPU's op events by name over the traced call: per decode step, the time of the
matrix products (dot / custom-call events: the weight reads), of the fusions around them
(norms, rope, attention over the cache, softmax, casts) and of the rest, then the ops that
took most. Run it on a quiet host; the trace adds a little time to each op.

    .venv/bin/python -m benchmarks.decode_profile [--dtype=float32|bfloat16|int8] [--batch=1] [--new=64] [--top=15]
"""

from __future__ import annotations

import collections
import gzip
import json
import pathlib
import re
import tempfile
import time

import jax
import numpy as np
from absl import app, flags
from flax import nnx

from benchmarks import decode
from benchmarks.decode import CFG, PROMPT
from train.generate.autoregressive import compile_generate, left_pad
from train.mesh import make_mesh
from train.state import model_factory, param_shardings

_DTYPE = decode._DTYPE  # --dtype, defined there (default float32)
_BATCH = flags.DEFINE_integer("batch", 1, "Prompt rows.")
_NEW = flags.DEFINE_integer("new", 64, "New tokens in the traced call.")
_TOP = flags.DEFINE_integer("top", 15, "Ops to list.")


def op_kind(name: str) -> str:
    """A trace event's op, as a kind: products (weight reads), fusions, or other ops."""
    if re.search(r"dot|custom-call|convolution|ynn|onednn", name):
        return "products"
    return "fusions" if name.startswith(("fusion", "loop_", "input_", "wrapped_")) else "other"


def main(argv: list[str]) -> None:
    del argv
    mesh = make_mesh((1, 1, 1), jax.devices()[:1])
    graphdef, _, shardings = param_shardings(CFG, mesh)
    params = jax.jit(lambda: nnx.to_pure_dict(nnx.state(model_factory(CFG)(0))), out_shardings=shardings)()
    run = compile_generate(graphdef, shardings, CFG, mesh, max_new_bucket=_NEW.value, eos_id=-1, pad_id=0,
                           dtype=_DTYPE.value)
    rows = np.random.default_rng(0).integers(4, CFG.vocab_size, (_BATCH.value, PROMPT))
    prompts = left_pad([list(row) for row in rows], PROMPT, 0)
    call = lambda: np.asarray(run(params, prompts.tokens, prompts.lengths, max_new_tokens=_NEW.value)["tokens"])
    call(), call()  # compile, warm up
    started = time.perf_counter()
    call()
    untraced = time.perf_counter() - started
    with tempfile.TemporaryDirectory() as folder:
        with jax.profiler.trace(folder, create_perfetto_trace=True):
            started = time.perf_counter()
            call()
            traced = time.perf_counter() - started
        trace_file = next(pathlib.Path(folder).rglob("*.trace.json.gz"))
        events = json.loads(gzip.decompress(trace_file.read_bytes()))["traceEvents"]
    # XLA:CPU's op events name an HLO instruction; host-side Python/runtime events are left out.
    ops = [e for e in events if e.get("ph") == "X" and "hlo_op" in e.get("args", {})]
    if not ops:
        names = collections.Counter(e.get("name") for e in events if e.get("ph") == "X")
        raise SystemExit(f"no HLO op events in the trace; most frequent events: {names.most_common(8)}")
    by_name = collections.defaultdict(float)
    for e in ops:
        by_name[e["args"]["hlo_op"]] += e["dur"] / 1e3  # ms
    steps = _NEW.value - 1
    kinds = collections.defaultdict(float)
    for name, ms in by_name.items():
        kinds[op_kind(name)] += ms
    total = sum(by_name.values())
    print(f"meshlm {_DTYPE.value}, batch {_BATCH.value}, {_NEW.value} new tokens: call {untraced * 1e3:.0f} ms "
          f"untraced, {traced * 1e3:.0f} ms traced; op events sum to {total:.0f} ms "
          f"({total / steps:.2f} ms per decode step if the prefill is left aside)")
    for kind, ms in sorted(kinds.items(), key=lambda kv: -kv[1]):
        print(f"  {kind:9s} {ms:8.1f} ms  {ms / total:5.1%}  {ms / steps:6.3f} ms/step")
    print(f"top {_TOP.value} ops (ms over the call, % of op time):")
    for name, ms in sorted(by_name.items(), key=lambda kv: -kv[1])[:_TOP.value]:
        print(f"  {ms:8.1f}  {ms / total:5.1%}  {name}")


if __name__ == "__main__":
    app.run(main)
