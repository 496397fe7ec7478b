"""Decoding speed of meshlm's jitted loop against Hugging Face `LlamaForCausalLM.generate`.

A ~100M Llama decoder (hidden 768, 12 layers, 12 heads, 4 kv heads, MLP 2048, vocab
32000, tied embeddings), random weights copied into both frameworks (their fp32 logits
are checked equal first). 32-token prompts, 128 new tokens (EOS disabled so both produce
all 128), greedy, at batch 1 and 8; PyTorch on 2 threads. `--dtype` picks the precision:
float32; bfloat16 (meshlm holds the weights in bf16 and computes in bf16 with float32
accumulation; HF runs `model.to(torch.bfloat16)`); int8 (meshlm's int8 weights with
per-channel scales, model/decode_kernels.py; HF runs bf16, having no int8 path of its
own). The meshlm dtypes in `--compare` (by default the wider ones) are timed in the same
rounds, so the speedup over them is measured side by side.

Rounds alternate after a warm-up; each side takes an untimed 1-token call before its
timed ones. The bandwidth roof is the bytes a decode step reads (the weights in the
decoding dtype) divided by the best read bandwidth of two probes timed in each round
beside the decoding (the host's load moves both): a float32 matrix-vector product and a
2-row product of the decoding dtype, each over a 256 MB matrix. The loop's steps/s set
against it leave out the prompt's prefill (a 1-token call of the same compile, timed in
each round, is taken off the 128-token call's time). Greedy agreement is printed against
HF and against the compared dtypes: on these random weights the logits are nearly flat,
so a rounding difference flips a token early and the rows part; agreement on a trained
model is `tests/test_decode_precision.py`'s.

    .venv/bin/python -m benchmarks.decode [--dtype=float32|bfloat16|int8] [--compare=float32]
        [--repeats=3] [--batches=1,8] [--nohf]

HF's bf16 generate is slow on this CPU (~2 tokens/s at batch 1), so a bf16 or int8 run with
HF takes ~15 minutes here; --nohf times meshlm's dtypes alone in a few.
"""

from __future__ import annotations

import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from flax import nnx

from model.config import ModelConfig
from model.precision import WEIGHT_DTYPES
from train.generate.autoregressive import compile_generate, left_pad
from train.mesh import make_mesh
from train.state import model_factory, param_shardings

_DTYPE = flags.DEFINE_enum("dtype", "float32", list(WEIGHT_DTYPES), "meshlm's decoding dtype.")
_COMPARE = flags.DEFINE_list("compare", None, "meshlm dtypes timed beside --dtype (default: the wider ones).")
_HF = flags.DEFINE_bool("hf", True, "Time HF generate too (--nohf: meshlm's dtypes only, much quicker).")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed rounds per batch size; each runs every side.")
_BATCHES = flags.DEFINE_list("batches", ["1", "8"], "Batch sizes to time.")
PROMPT, NEW = 32, 128
CFG = ModelConfig(arch="llama", vocab_size=32000, max_len=256, hidden=768, num_layers=12, num_heads=12,
                  num_kv_heads=4, mlp_dim=2048, dropout=0.0, attention_dropout=0.0, layer_norm_eps=1e-5,
                  rope_theta=10000.0, tie_embeddings=True)


def hf_model(params: dict):
    """LlamaForCausalLM holding the same weights (our kernels transposed to PyTorch's [out, in])."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    hf = LlamaForCausalLM(LlamaConfig(
        vocab_size=CFG.vocab_size, hidden_size=CFG.hidden, intermediate_size=CFG.mlp_dim,
        num_hidden_layers=CFG.num_layers, num_attention_heads=CFG.num_heads,
        num_key_value_heads=CFG.num_kv_heads, rms_norm_eps=CFG.layer_norm_eps, rope_theta=CFG.rope_theta,
        max_position_embeddings=CFG.max_len, tie_word_embeddings=True, attention_bias=False,
        mlp_bias=False)).eval()
    p = jax.tree.map(np.asarray, params)
    layers, d = p["layers"], CFG.hidden
    state = {"model.embed_tokens.weight": p["embed"]["embedding"], "model.norm.weight": p["final_norm"]["scale"]}
    for i in range(CFG.num_layers):
        a, m, pre = layers["attention"], layers["mlp"], f"model.layers.{i}."
        state.update({
            pre + "input_layernorm.weight": layers["attention_norm"]["scale"][i],
            pre + "post_attention_layernorm.weight": layers["mlp_norm"]["scale"][i],
            pre + "self_attn.q_proj.weight": a["query"]["kernel"][i].reshape(d, -1).T,
            pre + "self_attn.k_proj.weight": a["key"]["kernel"][i].reshape(d, -1).T,
            pre + "self_attn.v_proj.weight": a["value"]["kernel"][i].reshape(d, -1).T,
            pre + "self_attn.o_proj.weight": a["out"]["kernel"][i].reshape(-1, d).T,
            pre + "mlp.gate_proj.weight": m["gate"]["kernel"][i].T,
            pre + "mlp.up_proj.weight": m["up"]["kernel"][i].T,
            pre + "mlp.down_proj.weight": m["down"]["kernel"][i].T,
        })
    hf.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state.items()}, strict=False)
    hf.tie_weights()
    return hf


def bandwidth_probe(dtype: str) -> Callable[[int], float]:
    """A probe: the best bytes/s of reading a 256 MB matrix (best of n), by a float32 matrix-vector
    product or a kernel-first 2-row product in `dtype` (bf16 -> f32; int8 -> int32), the loop's own form."""
    f32 = jnp.float32
    probes = [(jax.jit(lambda w, v: w @ v), jnp.ones((8192, 8192), f32), jnp.ones((8192,), f32))]
    if dtype != "float32":
        itype, acc = (jnp.bfloat16, f32) if dtype == "bfloat16" else (jnp.int8, jnp.int32)
        columns = 8192 * 4 // jnp.dtype(itype).itemsize
        kernel_first = lambda w, v: jax.lax.dot_general(w, v, (((1,), (1,)), ((), ())), preferred_element_type=acc)
        probes.append((jax.jit(kernel_first), jnp.ones((8192, columns), itype), jnp.ones((2, columns), itype)))
    for f, w, v in probes:
        f(w, v).block_until_ready()

    def probe(n: int) -> float:
        return max(w.nbytes / min(_seconds(lambda: f(w, v).block_until_ready()) for _ in range(n))
                   for f, w, v in probes)

    return probe


def _seconds(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def main(argv: list[str]) -> None:
    del argv
    import torch

    torch.set_num_threads(2)
    dtype = _DTYPE.value
    compare = _COMPARE.value if _COMPARE.value is not None else list(WEIGHT_DTYPES[:WEIGHT_DTYPES.index(dtype)])
    bad = [d for d in compare if d not in WEIGHT_DTYPES or d == dtype]
    if bad:
        raise app.UsageError(f"--compare={','.join(compare)}; accepted: dtypes of {WEIGHT_DTYPES} other than --dtype")
    mesh = make_mesh((1, 1, 1), jax.devices()[:1])
    graphdef, _, shardings = param_shardings(CFG, mesh)
    params = jax.jit(lambda: nnx.to_pure_dict(nnx.state(model_factory(CFG)(0))), out_shardings=shardings)()
    rng = np.random.default_rng(0)
    hf_dtype = "float32" if dtype == "float32" else "bfloat16"
    if _HF.value:
        hf = hf_model(params)
        check = np.random.default_rng(1).integers(4, CFG.vocab_size, (1, PROMPT))
        ours = nnx.merge(graphdef, params)(jnp.asarray(check), jnp.ones((1, PROMPT), jnp.int32),
                                           jnp.arange(PROMPT)[None])
        with torch.no_grad():
            theirs = hf(torch.from_numpy(check)).logits.numpy()
        print(f"model: {sum(x.size for x in jax.tree.leaves(params)) / 1e6:.1f}M parameters; fp32 "
              f"max |logits - HF logits| = {np.abs(np.asarray(ours) - theirs).max():.2e}")
        hf = hf.to(torch.bfloat16) if hf_dtype == "bfloat16" else hf
    sides = {d: compile_generate(graphdef, shardings, CFG, mesh, max_new_bucket=NEW, eos_id=-1, pad_id=0, dtype=d)
             for d in [dtype, *compare]}
    weight_bytes = sum(x.nbytes for x in jax.tree.leaves(sides[dtype].layout.convert(params)))
    probe = bandwidth_probe(dtype)
    bandwidth = probe(10)
    print(f"meshlm {dtype}: {weight_bytes / 1e6:.0f} MB of weights read per decode step; warm-up probe "
          f"{bandwidth / 1e9:.1f} GB/s -> roof {bandwidth / weight_bytes:.1f} decode steps/s; HF generate in "
          f"{hf_dtype if _HF.value else 'not timed (--nohf)'}; meshlm beside: {', '.join(compare) or 'none'}")
    for batch in (int(b) for b in _BATCHES.value):
        tokens = rng.integers(4, CFG.vocab_size, (batch, PROMPT)).astype(np.int32)
        prompts = left_pad([list(row) for row in tokens], PROMPT, 0)
        ids = torch.from_numpy(tokens.astype(np.int64))

        def run_meshlm(side: str, new: int = NEW) -> np.ndarray:
            out = sides[side](params, prompts.tokens, prompts.lengths, max_new_tokens=new)
            return np.asarray(out["tokens"])

        def run_hf(new: int = NEW) -> np.ndarray:
            with torch.no_grad():
                out = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new,
                                  min_new_tokens=new, do_sample=False, eos_token_id=None, pad_token_id=0)
            return out[:, PROMPT:].numpy()

        outputs = {side: run_meshlm(side) for side in sides}  # also the warm-up
        if _HF.value:
            outputs["hf"] = run_hf()
        seconds = {side: [] for side in outputs}
        first_s, bandwidths = [], []
        for _ in range(_REPEATS.value):
            bandwidths.append(probe(3))  # the roof under this round's conditions
            for side in sides:
                run_meshlm(side, 1)  # untimed: memory idle since the last call is touched again
                seconds[side].append(_seconds(lambda: run_meshlm(side)))
                if side == dtype:  # prefill and the first token: the same compile
                    first_s.append(_seconds(lambda: run_meshlm(side, 1)))
            if _HF.value:
                run_hf(1)
                seconds["hf"].append(_seconds(run_hf))
        tps = {side: batch * NEW / np.median(s) for side, s in seconds.items()}
        # The roof bounds the loop's steps, each reading all weights once; prefill is compute bound.
        steps_per_s = (NEW - 1) / np.median(np.subtract(seconds[dtype], first_s))
        roof = np.median(bandwidths) / weight_bytes
        agree = {side: (outputs[dtype] == out).mean() for side, out in outputs.items() if side != dtype}
        versus_hf = (f", HF generate ({hf_dtype}) {tps['hf']:.1f} tokens/s, ratio {tps[dtype] / tps['hf']:.2f}x"
                     if _HF.value else "")
        print(f"batch {batch}: meshlm {dtype} {tps[dtype]:.1f} tokens/s{versus_hf}; decoding loop {steps_per_s:.1f} "
              f"steps/s (after a {np.median(first_s) * 1e3:.0f} ms prefill) = {steps_per_s / roof:.0%} of the "
              f"bandwidth roof ({roof:.1f} steps/s at this batch's rounds' {np.median(bandwidths) / 1e9:.1f} GB/s)")
        for side in compare:
            print(f"  beside it, meshlm {side}: {tps[side]:.1f} tokens/s ({dtype} is {tps[dtype] / tps[side]:.2f}x)")
        print("  greedy tokens equal: " + ", ".join(f"{'HF' if s == 'hf' else 'meshlm ' + s} {a:.0%}"
                                                    for s, a in agree.items()) + f" (medians of {_REPEATS.value})")
    print("note: timed on a shared 2-core CPU; other processes' load makes these figures noisy")


if __name__ == "__main__":
    app.run(main)
