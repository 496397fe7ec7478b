"""One prepared accelerator run: the bf16 matmul peak and train-step MFU at real model sizes.

Runs on whatever `jax.devices()[0]` is (meant for one GPU or TPU chip): it measures the
chip's bf16 matmul FLOP/s, then times meshlm's jitted train step (bf16 compute, fp32
parameters and AdamW state) for the BERT-large shape (MLM) and a ~1.1B Llama decoder
(configs/llama_1b.py; causal LM), and prints MFU against the datasheet peak of the chip
(train/flops.py's table) and against the measured peak.

    ./launch.sh run benchmarks.gpu_suite [--steps=10] [--only=bert_large,llama_1b]
"""

from __future__ import annotations

import dataclasses
import time

import jax
import numpy as np
from absl import app, flags

from benchmarks.peak_flops import matmul_flops_per_sec
from train.config import Config, load_config
from train.flops import non_embedding_params, peak_flops_per_device, train_flops_per_token
from train.masking import MaskingSpec, prediction_budget
from train.mesh import make_mesh, to_global
from train.optimizer import make_optimizer
from train.state import init_state, state_layout
from train.steps import compile_train_step

_STEPS = flags.DEFINE_integer("steps", 10, "Timed steps per model (after 2 warm-up steps).")
_ONLY = flags.DEFINE_list("only", ["bert_large", "llama_1b"], "Which models to time.")


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


MODELS = {"bert_large": bert_large, "llama_1b": llama_1b}


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


def main(argv: list[str]) -> None:
    del argv
    device = jax.devices()[0]
    datasheet = peak_flops_per_device(device.device_kind)
    measured = matmul_flops_per_sec(8192, "bfloat16", repeats=5)
    print(f"device: {device.device_kind} ({jax.default_backend()}); bf16 matmul measured "
          f"{measured / 1e12:.1f} TFLOP/s; datasheet {datasheet / 1e12 if datasheet else float('nan'):.0f} TFLOP/s")
    for name in _ONLY.value:
        config = MODELS[name]()
        seconds, flops, params = time_train_step(config, _STEPS.value)
        tokens = config.train.batch_size * config.data.seq_len / seconds
        achieved = flops * tokens
        vs_sheet = f"{achieved / datasheet:.1%}" if datasheet else "n/a"
        print(f"{name}: {params / 1e9:.2f}B params, batch {config.train.batch_size} x {config.data.seq_len}, "
              f"{seconds * 1e3:.0f} ms/step, {tokens:,.0f} tokens/s, {achieved / 1e12:.1f} model TFLOP/s; "
              f"MFU {vs_sheet} of datasheet, {achieved / measured:.1%} of measured matmul peak")


if __name__ == "__main__":
    app.run(main)
