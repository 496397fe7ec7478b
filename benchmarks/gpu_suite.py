"""One prepared accelerator run: the bf16 matmul peak, train-step MFU and decoding at real model sizes.

Runs on whatever `jax.devices()[0]` is (meant for one GPU or TPU chip): it measures the
chip's bf16 matmul FLOP/s, then times meshlm's jitted bf16 train step (bf16 compute, fp32
parameters and AdamW state) for the BERT-large shape (MLM) and a ~1.1B Llama decoder
(configs/llama_1b.py; causal LM), and prints MFU against the datasheet peak of the chip
(train/flops.py's table) and against the measured peak. Then it times the decoding loop
(train/generate/autoregressive.py) of the ~1.1B decoder with its weights held in float32,
bfloat16 and int8 (model/decode_kernels.py; int8 is weight-only on accelerators) at batch 1
and 8: 32-token prompts, 128 new tokens, and each loop's steps/s against the memory roof
(the weight bytes a step reads over the chip's measured read bandwidth).

    ./launch.sh run benchmarks.gpu_suite [--steps=10] [--only=bert_large,llama_1b]
        [--decode=llama_1b] [--decode_dtypes=float32,bfloat16,int8] [--decode_batches=1,8]

`gpt_tiny` (configs/gpt_tiny.py) in --only or --decode runs every row's code in seconds on a
CPU, to check the script before a device is lent:

    .venv/bin/python -m benchmarks.gpu_suite --only=gpt_tiny --decode=gpt_tiny --steps=2
"""

from __future__ import annotations

import dataclasses
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from flax import nnx

from benchmarks.peak_flops import matmul_flops_per_sec
from train.config import Config, load_config
from train.flops import non_embedding_params, peak_flops_per_device, train_flops_per_token
from train.generate.autoregressive import compile_generate, left_pad
from train.masking import MaskingSpec, prediction_budget
from train.mesh import make_mesh, to_global
from train.optimizer import make_optimizer
from train.state import init_state, model_factory, param_shardings, state_layout
from train.steps import compile_train_step

_STEPS = flags.DEFINE_integer("steps", 10, "Timed steps per model (after 2 warm-up steps).")
_ONLY = flags.DEFINE_list("only", ["bert_large", "llama_1b"], "Models whose bf16 train step is timed.")
_DECODE = flags.DEFINE_list("decode", ["llama_1b"], "Decoders whose decoding loop is timed.")
_DECODE_DTYPES = flags.DEFINE_list("decode_dtypes", ["float32", "bfloat16", "int8"], "Decoding weight dtypes.")
_DECODE_BATCHES = flags.DEFINE_list("decode_batches", ["1", "8"], "Decoding batch sizes.")
PROMPT, NEW = 32, 128


def bert_large() -> Config:
    """BERT-large (24 x 1024, 16 heads, 4096 MLP, 30522 vocab), 32 rows of 512 tokens."""
    config = load_config("configs/bert_base.py")
    config.name = "bert_large"
    config.model = dataclasses.replace(config.model, vocab_size=30522, hidden=1024, num_layers=24,
                                       num_heads=16, mlp_dim=4096)
    config.train = dataclasses.replace(config.train, batch_size=32)
    return config


def llama_1b() -> Config:
    """configs/llama_1b.py at 8 rows of 2048 tokens, full remat."""
    config = load_config("configs/llama_1b.py")
    config.train = dataclasses.replace(config.train, batch_size=8)
    return config


def gpt_tiny() -> Config:
    """configs/gpt_tiny.py: every row's code in seconds on a CPU."""
    return load_config("configs/gpt_tiny.py")


MODELS = {"bert_large": bert_large, "llama_1b": llama_1b, "gpt_tiny": gpt_tiny}


def time_train_step(config: Config, steps: int) -> tuple[float, float, int]:
    """(seconds per step, model FLOPs per token, parameter count) for one device, bf16 compute."""
    m = dataclasses.replace(config.model, dtype="bfloat16", param_dtype="float32")
    seq_len, batch = config.data.seq_len, config.train.batch_size
    mesh = make_mesh((1, 1, 1), jax.devices()[:1])
    tx, schedule = make_optimizer(config.optim, 1000)
    layout = state_layout(m, tx, mesh)
    spec, head_fraction = None, 1.0
    if m.arch == "bert":
        budget = prediction_budget(seq_len, config.data.mlm_probability)
        spec = MaskingSpec(mask_id=4, vocab_size=m.vocab_size, special_ids=(0, 1, 2, 3, 4),
                           probability=config.data.mlm_probability, max_predictions=budget)
        head_fraction = budget / seq_len
    step = compile_train_step(layout, mesh, tx=tx, schedule=schedule, spec=spec, seed=0)
    state = init_state(m, tx, layout, mesh, seed=0)
    rng = np.random.default_rng(0)
    tokens = rng.integers(5, m.vocab_size, (batch, seq_len)).astype(np.int32)
    batch_arrays = to_global({"tokens": tokens, "segment_ids": np.ones_like(tokens),
                              "positions": np.tile(np.arange(seq_len, dtype=np.int32), (batch, 1))}, mesh)
    for _ in range(2):
        state, metrics = step(state, batch_arrays)
    jax.block_until_ready(metrics)
    started = time.perf_counter()
    for _ in range(steps):
        state, metrics = step(state, batch_arrays)
    jax.block_until_ready(metrics)
    seconds = (time.perf_counter() - started) / steps
    flops = train_flops_per_token(m, non_embedding_params(layout.abstract["params"]), seq_len, head_fraction)
    return seconds, flops, layout.param_count


def read_bandwidth(repeats: int = 5) -> float:
    """Bytes/s of the best of `repeats` reductions over a 1 GiB bfloat16 array (the chip's read rate)."""
    size = (1 << 30) // 2
    if jax.default_backend() == "cpu":
        size //= 4  # 256 MiB: beyond any CPU cache, within a small host's memory
    data = jnp.ones((size // 4096, 4096), jnp.bfloat16)
    total = jax.jit(lambda a: jnp.sum(a, axis=1, dtype=jnp.float32))  # along rows: XLA:CPU streams them
    total(data).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        total(data).block_until_ready()
        best = min(best, time.perf_counter() - started)
    return data.nbytes / best


def time_decode(config: Config, dtype: str, batch: int, repeats: int = 3) -> tuple[float, float, int]:
    """(decoding loop steps/s without the prefill, tokens/s, weight bytes a step reads), best of `repeats`."""
    m = dataclasses.replace(config.model, dtype="float32", param_dtype="float32", max_len=PROMPT + NEW)
    mesh = make_mesh((1, 1, 1), jax.devices()[:1])
    graphdef, _, shardings = param_shardings(m, mesh)
    params = jax.jit(lambda: nnx.to_pure_dict(nnx.state(model_factory(m)(0))), out_shardings=shardings)()
    run = compile_generate(graphdef, shardings, m, mesh, max_new_bucket=NEW, eos_id=-1, pad_id=0, dtype=dtype)
    weight_bytes = sum(x.nbytes for x in jax.tree.leaves(run.layout.convert(params)))
    rows = np.random.default_rng(0).integers(5, m.vocab_size, (batch, PROMPT))
    prompts = left_pad([list(row) for row in rows], PROMPT, 0)

    def seconds(new: int) -> float:
        started = time.perf_counter()
        np.asarray(run(params, prompts.tokens, prompts.lengths, max_new_tokens=new)["tokens"])
        return time.perf_counter() - started

    seconds(NEW), seconds(1)  # compile and warm up
    full = min(seconds(NEW) for _ in range(repeats))
    first = min(seconds(1) for _ in range(repeats))
    return (NEW - 1) / max(full - first, 1e-9), batch * NEW / full, weight_bytes


def main(argv: list[str]) -> None:
    del argv
    device = jax.devices()[0]
    datasheet = peak_flops_per_device(device.device_kind)
    measured = matmul_flops_per_sec(8192 if jax.default_backend() != "cpu" else 1024, "bfloat16", repeats=5)
    print(f"device: {device.device_kind} ({jax.default_backend()}); bf16 matmul measured "
          f"{measured / 1e12:.1f} TFLOP/s; datasheet {datasheet / 1e12 if datasheet else float('nan'):.0f} TFLOP/s")
    for name in _ONLY.value:
        config = MODELS[name]()
        seconds, flops, params = time_train_step(config, _STEPS.value)
        tokens = config.train.batch_size * config.data.seq_len / seconds
        achieved = flops * tokens
        vs_sheet = f"{achieved / datasheet:.1%}" if datasheet else "n/a"
        print(f"{name} bf16 train step: {params / 1e9:.2f}B params, batch {config.train.batch_size} x {config.data.seq_len}, "
              f"{seconds * 1e3:.0f} ms/step, {tokens:,.0f} tokens/s, {achieved / 1e12:.1f} model TFLOP/s; "
              f"MFU {vs_sheet} of datasheet, {achieved / measured:.1%} of measured matmul peak")
    if not _DECODE.value:
        return
    bandwidth = read_bandwidth()
    print(f"read bandwidth (bf16 reduction over {'256 MiB' if jax.default_backend() == 'cpu' else '1 GiB'}): "
          f"{bandwidth / 1e9:.0f} GB/s")
    for name in _DECODE.value:
        config = MODELS[name]()
        for dtype in _DECODE_DTYPES.value:
            for batch in (int(b) for b in _DECODE_BATCHES.value):
                steps, tokens, weight_bytes = time_decode(config, dtype, batch)
                roof = bandwidth / weight_bytes
                print(f"{name} decode {dtype} batch {batch}: {tokens:,.1f} tokens/s (prompt {PROMPT}, {NEW} new); "
                      f"loop {steps:,.1f} steps/s = {steps / roof:.0%} of the memory roof "
                      f"({weight_bytes / 1e6:,.0f} MB of weights per step, {roof:,.1f} steps/s)")


if __name__ == "__main__":
    app.run(main)
