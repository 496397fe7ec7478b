"""One prepared accelerator run: the bf16 matmul peak, train-step MFU and decoding at real model
sizes, and fused against XLA attention.

Runs on whatever `jax.devices()[0]` is (meant for one GPU or TPU chip): it measures the
chip's bf16 matmul FLOP/s, then times meshlm's jitted bf16 train step (bf16 compute, fp32
parameters and AdamW state) for the BERT-large shape (MLM) and a ~1.1B Llama decoder
(configs/llama_1b.py; causal LM), and prints MFU against the datasheet peak of the chip
(train/flops.py's table) and against the measured peak. Then it times the decoding loop
(train/generate/autoregressive.py) of the ~1.1B decoder with its weights held in float32,
bfloat16 and int8 (model/decode_kernels.py; int8 is weight-only on accelerators) at batch 1
and 8: 32-token prompts, 128 new tokens, and each loop's steps/s against the memory roof
(the weight bytes a step reads over the chip's measured read bandwidth).

`attention` times the llama_1b train step with the platform's fused attention (cuDNN on a
GPU, Splash on a TPU) against the XLA path at 2k and 8k tokens a row (the same 16k tokens
a step), after checking on packed rows that the fused kernel's outputs and gradients
match the XLA path's: step time, MFU, XLA's planned memory for the step and the device's
peak. `--dry_run` runs all of it at toy sizes on a CPU (Splash interpreted as the fused
kernel; configs/gpt_tiny.py in place of each train-step and decoding model), to show the
script works before a chip is lent.

    ./launch.sh run benchmarks.gpu_suite [--steps=10] [--only=bert_large,llama_1b,attention]
        [--decode=llama_1b] [--decode_dtypes=float32,bfloat16,int8] [--decode_batches=1,8]
    ./launch.sh run benchmarks.gpu_suite --dry_run
"""

from __future__ import annotations

import dataclasses
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from flax import nnx

from benchmarks.peak_flops import best_seconds, matmul_flops_per_sec
from model.attention import self_attention
from train.config import Config, load_config
from train.flops import non_embedding_params, peak_flops_per_device, train_flops_per_token
from train.generate.autoregressive import compile_generate, left_pad
from train.masking import MaskingSpec, prediction_budget
from train.mesh import attention_kernel, make_mesh, sharding_context, to_global
from train.optimizer import make_optimizer
from train.state import init_state, model_factory, param_shardings, state_layout
from train.steps import compile_train_step

_STEPS = flags.DEFINE_integer("steps", 10, "Timed steps per model (after 2 warm-up steps).")
_ONLY = flags.DEFINE_list("only", ["bert_large", "llama_1b", "attention"], "What to time (bf16 train steps, attention).")
_LENGTHS = flags.DEFINE_list("attention_lengths", ["2048", "8192"], "Row lengths for `attention`.")
_DRY_RUN = flags.DEFINE_bool("dry_run", False, "Toy sizes on any device (a CPU runs Splash interpreted).")
_DECODE = flags.DEFINE_list("decode", ["llama_1b"], "Decoders whose decoding loop is timed.")
_DECODE_DTYPES = flags.DEFINE_list("decode_dtypes", ["float32", "bfloat16", "int8"], "Decoding weight dtypes.")
_DECODE_BATCHES = flags.DEFINE_list("decode_batches", ["1", "8"], "Decoding batch sizes.")

TOKENS_PER_STEP = 16384  # `attention`: rows of each length fill the same tokens a step
PROMPT, NEW = 32, 128  # decoding rows


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
    """configs/gpt_tiny.py: every train-step and decoding row's code in seconds on a CPU (--dry_run)."""
    return load_config("configs/gpt_tiny.py")


def llama_1b_at(seq_len: int, attention_impl: str) -> Config:
    """llama_1b with rows of `seq_len` tokens (TOKENS_PER_STEP a step) and the given attention."""
    config = load_config("configs/llama_1b.py")
    if _DRY_RUN.value:  # toy sizes: the same program shape on a CPU
        config.model = dataclasses.replace(config.model, vocab_size=1000, hidden=128, num_layers=2,
                                           num_heads=4, num_kv_heads=2, mlp_dim=256)
    config.model = dataclasses.replace(config.model, max_len=seq_len, attention_impl=attention_impl)
    config.data = dataclasses.replace(config.data, seq_len=seq_len)
    tokens = TOKENS_PER_STEP // 16 if _DRY_RUN.value else TOKENS_PER_STEP
    config.train = dataclasses.replace(config.train, batch_size=max(1, tokens // seq_len))
    config.name = f"llama_1b {seq_len} tokens, attention {attention_impl}"
    return config


MODELS = {"bert_large": bert_large, "llama_1b": llama_1b, "gpt_tiny": gpt_tiny}


def model_config(name: str) -> Config:
    """The named model's config; under --dry_run, gpt_tiny's in its place."""
    return gpt_tiny() if _DRY_RUN.value else MODELS[name]()


@dataclasses.dataclass
class StepTiming:
    seconds: float  # per step
    flops_per_token: float
    params: int
    planned_bytes: int  # XLA's plan: arguments + temporaries + outputs - aliased
    peak_bytes: int | None  # the device's peak so far (allocator statistics), where it has them


def time_train_step(config: Config, steps: int) -> StepTiming:
    """Times the jitted train step on one device, bf16 compute."""
    m = dataclasses.replace(config.model, dtype="bfloat16", param_dtype="float32")
    seq_len, batch = config.data.seq_len, config.train.batch_size
    rows = packed_rows(batch, seq_len, m.vocab_size)
    if m.max_segments_per_row < rows["segment_ids"].max():  # cuDNN's bound must hold every row's documents
        m = dataclasses.replace(m, max_segments_per_row=int(rows["segment_ids"].max()))
    mesh = make_mesh((1, 1, 1), jax.devices()[:1])
    tx, schedule = make_optimizer(config.optim, 1000)
    layout = state_layout(m, tx, mesh)
    spec, head_fraction = None, 1.0
    if m.arch == "bert":
        budget = prediction_budget(seq_len, config.data.mlm_probability)
        spec = MaskingSpec(mask_id=4, vocab_size=m.vocab_size, special_ids=(0, 1, 2, 3, 4),
                           probability=config.data.mlm_probability, max_predictions=budget)
        head_fraction = budget / seq_len
    jitted = compile_train_step(layout, mesh, tx=tx, schedule=schedule, spec=spec, seed=0).__wrapped__
    state = init_state(m, tx, layout, mesh, seed=0)
    batch_arrays = to_global(rows, mesh)
    with sharding_context(mesh):
        compiled = jitted.lower(state, batch_arrays).compile()
        for _ in range(2):
            state, metrics = compiled(state, batch_arrays)
        jax.block_until_ready(metrics)
        started = time.perf_counter()
        for _ in range(steps):
            state, metrics = compiled(state, batch_arrays)
        jax.block_until_ready(metrics)
    seconds = (time.perf_counter() - started) / steps
    memory = compiled.memory_analysis()
    planned = (memory.argument_size_in_bytes + memory.temp_size_in_bytes + memory.output_size_in_bytes
               - memory.alias_size_in_bytes)
    peak = (jax.devices()[0].memory_stats() or {}).get("peak_bytes_in_use")
    flops = train_flops_per_token(m, non_embedding_params(layout.abstract["params"]), seq_len, head_fraction)
    return StepTiming(seconds, flops, layout.param_count, planned, peak)


def packed_rows(rows: int, seq_len: int, vocab: int) -> dict[str, np.ndarray]:
    """Rows packed with documents of 100 to 1500 tokens (a few per row), the last one cut by the row end."""
    rng = np.random.default_rng(0)
    segment_ids = np.zeros((rows, seq_len), np.int32)
    positions = np.zeros((rows, seq_len), np.int32)
    for row in range(rows):
        start, doc = 0, 1
        while start < seq_len:
            size = min(int(rng.integers(100, 1500)), seq_len - start)
            segment_ids[row, start:start + size] = doc
            positions[row, start:start + size] = np.arange(size)
            start, doc = start + size, doc + 1
    tokens = rng.integers(5, vocab, (rows, seq_len)).astype(np.int32)
    return {"tokens": tokens, "segment_ids": segment_ids, "positions": positions}


def check_fused_attention(impl: str, seq_len: int, config: Config) -> float:
    """Largest difference of the fused kernel's outputs and q/k/v gradients from the XLA path's,
    relative to each one's largest value, on packed rows of the model's heads in bf16."""
    m = config.model
    rows = packed_rows(1, seq_len, 10)["segment_ids"]
    rows[:, -37:] = 0  # and some padding
    keys = jax.random.split(jax.random.key(0), 4)
    head_dim = m.resolved_head_dim
    q = jax.random.normal(keys[0], (1, seq_len, m.num_heads, head_dim), jnp.bfloat16)
    k, v = (jax.random.normal(key, (1, seq_len, m.resolved_kv_heads, head_dim), jnp.bfloat16) for key in keys[1:3])
    cotangent = jax.random.normal(keys[3], q.shape, jnp.float32)
    real = jnp.asarray(rows > 0)[:, :, None, None]  # cuDNN leaves padding outputs at zero

    def outputs_and_grads(q, k, v, which):
        def loss(q, k, v):
            out = self_attention(q, k, v, jnp.asarray(rows), causal=True, impl=which,
                                 max_segments=int(rows.max()))
            return jnp.sum(jnp.where(real, out.astype(jnp.float32) * cotangent, 0.0)), out

        (_, out), grads = jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True)(q, k, v)
        return [jnp.where(real, out, 0).astype(jnp.float32)] + [g.astype(jnp.float32) for g in grads]

    outputs_and_grads = jax.jit(outputs_and_grads, static_argnums=3)
    fused, xla = outputs_and_grads(q, k, v, impl), outputs_and_grads(q, k, v, "xla")
    return max(float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(b))) for a, b in zip(fused, xla))


def attention_suite(steps: int, peak: float | None) -> None:
    """The fused kernel against the XLA path for llama_1b at each length: check, then time."""
    platform = jax.devices()[0].platform
    fused = {"gpu": "cudnn", "tpu": "splash"}.get(platform, "splash" if _DRY_RUN.value else None)
    if fused is None:
        print(f"attention: no fused kernel on {platform}; run on a GPU or TPU (or --dry_run)")
        return
    for seq_len in (int(n) for n in _LENGTHS.value):
        if _DRY_RUN.value:
            seq_len //= 8
        configs = {impl: llama_1b_at(seq_len, impl) for impl in (fused, "xla")}
        mesh = make_mesh((1, 1, 1), jax.devices()[:1])
        attention_kernel(configs[fused].model, mesh, seq_len)  # fails in one line where it cannot run
        error = check_fused_attention(fused, seq_len, configs[fused])
        print(f"attention {seq_len} tokens: {fused} vs xla outputs and gradients (bf16, packed rows): "
              f"largest difference {error:.2e} of the largest value ({'ok' if error < 2e-2 else 'MISMATCH'})")
        times = {}
        for impl, config in configs.items():
            try:
                timing = time_train_step(config, steps)
            except jax.errors.JaxRuntimeError as e:  # e.g. the XLA path's [L, L] scores do not fit
                print(f"  {impl:>6}: failed: {str(e).splitlines()[0][:200]}")
                continue
            times[impl] = timing.seconds
            tokens = config.train.batch_size * seq_len / timing.seconds
            use = f"MFU {timing.flops_per_token * tokens / peak:.1%}" if peak else "MFU n/a"
            device_peak = f"{timing.peak_bytes / 2**30:.2f} GiB" if timing.peak_bytes else "n/a"
            print(f"  {impl:>6}: batch {config.train.batch_size} x {seq_len}, {timing.seconds * 1e3:.1f} ms/step, "
                  f"{tokens:,.0f} tokens/s, {use}; XLA's planned memory {timing.planned_bytes / 2**30:.2f} GiB, "
                  f"device peak so far {device_peak}")
        if len(times) == 2:
            print(f"  {fused} / xla speed at {seq_len} tokens: {times['xla'] / times[fused]:.2f}x"
                  + (" (interpreted Splash on a CPU: no speed signal)" if platform == "cpu" else ""))


def read_bandwidth(repeats: int = 5) -> float:
    """Bytes/s of the best of `repeats` reductions over a 1 GiB bfloat16 array (the chip's read rate)."""
    size = (1 << 30) // 2
    if jax.default_backend() == "cpu":
        size //= 4  # 256 MiB: beyond any CPU cache, within a small host's memory
    data = jnp.ones((size // 4096, 4096), jnp.bfloat16)
    total = jax.jit(lambda a: jnp.sum(a, axis=1, dtype=jnp.float32))  # along rows: XLA:CPU streams them
    return data.nbytes / best_seconds(lambda: total(data).block_until_ready(), repeats)


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
    measured = matmul_flops_per_sec(512 if _DRY_RUN.value else 8192, "bfloat16", repeats=5)
    print(f"device: {device.device_kind} ({jax.default_backend()}); bf16 matmul measured "
          f"{measured / 1e12:.1f} TFLOP/s; datasheet {datasheet / 1e12 if datasheet else float('nan'):.0f} TFLOP/s")
    steps = 1 if _DRY_RUN.value else _STEPS.value
    for name in _ONLY.value:
        if name == "attention":
            attention_suite(steps, datasheet or measured)
            continue
        config = model_config(name)  # the full-size models do not fit a CPU run: gpt_tiny under --dry_run
        timing = time_train_step(config, steps)
        tokens = config.train.batch_size * config.data.seq_len / timing.seconds
        achieved = timing.flops_per_token * tokens
        vs_sheet = f"{achieved / datasheet:.1%}" if datasheet else "n/a"
        print(f"{name}{' (dry run: gpt_tiny)' if _DRY_RUN.value else ''} bf16 train step: "
              f"{timing.params / 1e9:.2f}B params, batch {config.train.batch_size} x {config.data.seq_len}, "
              f"{timing.seconds * 1e3:.0f} ms/step, {tokens:,.0f} tokens/s, {achieved / 1e12:.1f} model TFLOP/s; "
              f"MFU {vs_sheet} of datasheet, {achieved / measured:.1%} of measured matmul peak")
    if not _DECODE.value:
        return
    bandwidth = read_bandwidth()
    print(f"read bandwidth (bf16 reduction over {'256 MiB' if jax.default_backend() == 'cpu' else '1 GiB'}): "
          f"{bandwidth / 1e9:.0f} GB/s")
    for name in _DECODE.value:
        config = model_config(name)
        for dtype in _DECODE_DTYPES.value:
            for batch in (int(b) for b in _DECODE_BATCHES.value):
                steps, tokens, weight_bytes = time_decode(config, dtype, batch)
                roof = bandwidth / weight_bytes
                print(f"{name}{' (dry run: gpt_tiny)' if _DRY_RUN.value else ''} decode {dtype} batch {batch}: {tokens:,.1f} tokens/s (prompt {PROMPT}, {NEW} new); "
                      f"loop {steps:,.1f} steps/s = {steps / roof:.0%} of the memory roof "
                      f"({weight_bytes / 1e6:,.0f} MB of weights per step, {roof:,.1f} steps/s)")


if __name__ == "__main__":
    app.run(main)
