"""meshlm's jitted train step against Hugging Face Transformers + torch AdamW, same shapes.

--model=bert: both sides train the BERT-base shape (12 layers, 768 hidden, 12 heads, 3072
MLP, vocab 32000, AdamW, dropout 0.1) on the same 15%-masked batch of 8 x 128 tokens
(BertForMaskedLM). --model=llama: the ~100M Llama of benchmarks/decode.py (causal LM,
LlamaForCausalLM) on 8 x 256 tokens. --dtype=bfloat16 trains with bf16 compute and fp32
parameters and optimizer state on both sides, each in its usual fast path: meshlm's
model.dtype=bfloat16 (model/precision.py), PyTorch's torch.autocast("cpu", bfloat16). They
alternate in this process after warm-up; the best round of each is compared. Each side
takes one untimed step before its timed ones in every round: memory a process frees and
leaves for a few seconds (XLA:CPU's per-step scratch, while the other side runs) can go
back to the hypervisor, and on this VM touching it again cost a JAX step ~0.8 s (2.85 ->
3.7 s after 3 s idle), a cost that back-to-back training steps never pay. MFU divides
each side's model FLOPs per second by the best fp32 matmul peak measured in the same run
(once before and once in every round) in the dtype trained.

    ./launch.sh run benchmarks.train_vs_torch [--model=bert|llama] [--dtype=float32|bfloat16]
        [--batch=8] [--seq_len=128 (bert) / 256 (llama)] [--rounds=5]

Run it through launch.sh, which has glibc's malloc ask for huge pages (README, Throughput
and MFU); without that, each step faults in its scratch 4 KiB at a time.

Needs the `hf` extra (torch 2.13.0 CPU, transformers).
"""

from __future__ import annotations

import dataclasses
import os
import time

import jax
import numpy as np
from absl import app, flags

from benchmarks.peak_flops import matmul_flops_per_sec
from train.config import load_config
from train.flops import non_embedding_params, train_flops_per_token
from train.masking import MaskingSpec, prediction_budget
from train.mesh import make_mesh, sharding_context, to_global
from train.optimizer import make_optimizer
from train.state import init_state, state_layout
from train.steps import compile_train_step

_MODEL = flags.DEFINE_enum("model", "bert", ["bert", "llama"], "bert: BERT-base MLM; llama: the ~100M causal LM.")
_DTYPE = flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Compute dtype (parameters stay fp32).")
_BATCH = flags.DEFINE_integer("batch", 8, "Rows per step.")
_SEQ_LEN = flags.DEFINE_integer("seq_len", 0, "Tokens per row (0: 128 for bert, 256 for llama).")
_ROUNDS = flags.DEFINE_integer("rounds", 5, "Timed rounds; each round runs both sides.")
_STEPS = flags.DEFINE_integer("steps", 2, "Steps per side per round.")

SPECIALS = (0, 1, 2, 3, 4)
MASK_ID = 4


def _batch(vocab: int, batch: int, seq_len: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    tokens = rng.integers(len(SPECIALS), vocab, (batch, seq_len)).astype(np.int32)
    tokens[:, 0], tokens[:, -1] = 2, 3
    return {"tokens": tokens, "segment_ids": np.ones_like(tokens),
            "positions": np.broadcast_to(np.arange(seq_len, dtype=np.int32), tokens.shape).copy()}


class JaxSide:
    """meshlm's train step on one device (the MLM prediction budget the trainer uses, for BERT)."""

    def __init__(self, config, batch: dict[str, np.ndarray]):
        m, d = config.model, config.data
        self.mesh = mesh = make_mesh((1, 1, 1), jax.devices()[:1])
        tx, schedule = make_optimizer(config.optim, config.train.steps)
        layout = state_layout(m, tx, mesh)
        seq_len = batch["tokens"].shape[1]
        self.spec = None if m.arch == "llama" else MaskingSpec(
            mask_id=MASK_ID, vocab_size=m.vocab_size, special_ids=SPECIALS, probability=d.mlm_probability,
            max_predictions=prediction_budget(seq_len, d.mlm_probability))
        self.step = compile_train_step(layout, mesh, tx=tx, schedule=schedule, spec=self.spec, seed=0)
        self.state = init_state(m, tx, layout, mesh, seed=0)
        self.batch = to_global(batch, mesh)
        self.param_count = layout.param_count
        self.non_embedding = non_embedding_params(layout.abstract["params"])

    def compiled_text(self) -> str:
        """The optimized HLO of the train step, as XLA compiled it for this device."""
        with sharding_context(self.mesh):
            return self.step.__wrapped__.lower(self.state, self.batch).compile().as_text()

    def head_fraction(self) -> float:
        """The share of positions the output projection runs on (the MLM budget, or all)."""
        return 1.0 if self.spec is None else self.spec.max_predictions / self.batch["tokens"].shape[1]

    def run(self, steps: int) -> float:
        started = time.perf_counter()
        for _ in range(steps):
            self.state, metrics = self.step(self.state, self.batch)
        jax.block_until_ready(metrics)
        return (time.perf_counter() - started) / steps


class TorchSide:
    """Transformers' BertForMaskedLM (labels -100 where not masked) or LlamaForCausalLM, with torch AdamW."""

    def __init__(self, config, batch: dict[str, np.ndarray], dtype: str):
        import torch
        import transformers

        m = config.model
        torch.manual_seed(0)
        self.torch = torch
        self.autocast = dtype == "bfloat16"
        tokens = batch["tokens"]
        if m.arch == "llama":
            hf_config = transformers.LlamaConfig(
                vocab_size=m.vocab_size, hidden_size=m.hidden, intermediate_size=m.mlp_dim,
                num_hidden_layers=m.num_layers, num_attention_heads=m.num_heads,
                num_key_value_heads=m.resolved_kv_heads, rms_norm_eps=m.layer_norm_eps, rope_theta=m.rope_theta,
                max_position_embeddings=m.max_len, tie_word_embeddings=m.tie_embeddings, attention_bias=False,
                mlp_bias=False)
            self.model = transformers.LlamaForCausalLM(hf_config).train()
            self.inputs = torch.from_numpy(tokens.astype(np.int64))
            self.labels = self.inputs
        else:
            hf_config = transformers.BertConfig(
                vocab_size=m.vocab_size, hidden_size=m.hidden, num_hidden_layers=m.num_layers,
                num_attention_heads=m.num_heads, intermediate_size=m.mlp_dim, max_position_embeddings=m.max_len,
                hidden_dropout_prob=m.dropout, attention_probs_dropout_prob=m.attention_dropout,
                layer_norm_eps=m.layer_norm_eps, hidden_act="gelu")
            self.model = transformers.BertForMaskedLM(hf_config).train()
            rng = np.random.default_rng(1)
            chosen = (rng.random(tokens.shape) < config.data.mlm_probability) & (tokens >= len(SPECIALS))
            self.inputs = torch.from_numpy(np.where(chosen, MASK_ID, tokens).astype(np.int64))
            self.labels = torch.from_numpy(np.where(chosen, tokens, -100).astype(np.int64))
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=1e-4, weight_decay=0.01)
        self.attention_mask = torch.ones_like(self.inputs)

    def run(self, steps: int) -> float:
        started = time.perf_counter()
        for _ in range(steps):
            self.optimizer.zero_grad(set_to_none=True)
            with self.torch.autocast("cpu", dtype=self.torch.bfloat16, enabled=self.autocast):
                loss = self.model(input_ids=self.inputs, attention_mask=self.attention_mask, labels=self.labels).loss
            loss.backward()
            self.torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
            self.optimizer.step()
        return (time.perf_counter() - started) / steps


def benchmark_config(model: str, dtype: str, seq_len: int):
    """The benchmark's model: configs/bert_base.py or configs/llama_100m.py (benchmarks/decode.py's)."""
    config = load_config("configs/llama_100m.py" if model == "llama" else "configs/bert_base.py")
    config.model = dataclasses.replace(config.model, dtype=dtype, max_len=max(config.model.max_len, seq_len))
    config.data = dataclasses.replace(config.data, seq_len=seq_len)
    return config


def sides_from_flags():
    """(config, seq_len, meshlm's side, PyTorch's side) as --model, --dtype, --batch and --seq_len say."""
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    seq_len = _SEQ_LEN.value or (256 if _MODEL.value == "llama" else 128)
    config = benchmark_config(_MODEL.value, _DTYPE.value, seq_len)
    batch = _batch(config.model.vocab_size, _BATCH.value, seq_len)
    return config, seq_len, JaxSide(config, batch), TorchSide(config, batch, _DTYPE.value)


def main(argv: list[str]) -> None:
    del argv
    peak = matmul_flops_per_sec(2048, _DTYPE.value)
    config, seq_len, jax_side, torch_side = sides_from_flags()
    sides = {"meshlm": jax_side, "pytorch": torch_side}
    for side in sides.values():  # warm-up: compile, allocate, first optimizer state
        side.run(2)
    times: dict[str, list[float]] = {name: [] for name in sides}
    for _ in range(_ROUNDS.value):
        for name, side in sides.items():
            side.run(1)  # untimed: touches memory again after the other side's turn (see above)
            times[name].append(side.run(_STEPS.value))
        # The roof is re-measured every round and the best kept: on a shared machine one
        # slow measurement would otherwise inflate every MFU figure.
        peak = max(peak, matmul_flops_per_sec(2048, _DTYPE.value, repeats=2))
    tokens = _BATCH.value * seq_len
    m = config.model
    # BERT: both sides train on ~15% of tokens; PyTorch still projects every position onto the vocabulary.
    needed = tokens * train_flops_per_token(m, jax_side.non_embedding, seq_len, jax_side.head_fraction())
    dense = tokens * train_flops_per_token(m, jax_side.non_embedding, seq_len)
    print(f"{config.name} shape: {jax_side.param_count / 1e6:.1f}M parameters, batch {_BATCH.value} x "
          f"{seq_len}, {_DTYPE.value} compute (fp32 parameters and AdamW); measured {_DTYPE.value} matmul "
          f"peak {peak / 1e9:.1f} GFLOP/s")
    # Both sides take their scratch from malloc, as launch.sh sets it up.
    print(f"GLIBC_TUNABLES={os.environ.get('GLIBC_TUNABLES', '(unset)')}")
    print(f"model FLOPs per step: {needed / 1e12:.3f} T (train/flops.py; the output projection on the positions "
          f"trained); {dense / 1e12:.3f} T projecting every token")
    for name, values in times.items():
        best = min(values)
        print(f"  {name:8s} step {best:7.3f} s  {tokens / best:7.1f} tokens/s  "
              f"MFU {needed / best / peak:6.1%}  (dense-head FLOPs: {dense / best / peak:6.1%})  "
              f"rounds {', '.join(f'{v:.2f}' for v in values)}")
    ratio = min(times["pytorch"]) / min(times["meshlm"])
    print(f"meshlm / pytorch tokens/s ({_DTYPE.value}): {ratio:.2f}x")


if __name__ == "__main__":
    app.run(main)
