"""Decoding speed of meshlm's jitted loop against Hugging Face `LlamaForCausalLM.generate`.

A ~100M Llama decoder (hidden 768, 12 layers, 12 heads, 4 kv heads, MLP 2048, vocab
32000, tied embeddings), random weights copied into both frameworks (their logits are
checked equal first). 32-token prompts, 128 new tokens (EOS disabled so both produce all
128), greedy, fp32, at batch 1 and 8; PyTorch on 2 threads. Rounds alternate after a
warm-up. The bandwidth roof is the weight bytes read per decode step divided by the read
bandwidth of a large matrix-vector product, timed in each round beside the decoding
(the host's load moves both); the loop's steps/s set against it leave out the prompt's
prefill (a 1-token call of the same compile, timed in each round, is taken off the
128-token call's time).

    .venv/bin/python -m benchmarks.decode [--repeats=3] [--batches=1,8]
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
from train.generate.autoregressive import compile_generate, left_pad
from train.mesh import make_mesh
from train.state import model_factory, param_shardings

_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed rounds per batch size; each runs both frameworks.")
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


def bandwidth_probe() -> Callable[[int], float]:
    """A probe: bytes/s a jitted fp32 matrix-vector product streams from a 256 MB matrix (best of n)."""
    w = jnp.ones((8192, 8192), jnp.float32)
    v = jnp.ones((8192,), jnp.float32)
    f = jax.jit(lambda w, v: w @ v)
    f(w, v).block_until_ready()
    return lambda n: w.size * 4 / min(_seconds(lambda: f(w, v).block_until_ready()) for _ in range(n))


def _seconds(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def main(argv: list[str]) -> None:
    del argv
    import torch

    torch.set_num_threads(2)
    mesh = make_mesh((1, 1, 1), jax.devices()[:1])
    graphdef, _, shardings = param_shardings(CFG, mesh)
    params = jax.jit(lambda: nnx.to_pure_dict(nnx.state(model_factory(CFG)(0))), out_shardings=shardings)()
    weight_bytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(params))
    hf = hf_model(params)
    rng = np.random.default_rng(0)
    check = rng.integers(4, CFG.vocab_size, (1, PROMPT))
    ours = nnx.merge(graphdef, params)(jnp.asarray(check), jnp.ones((1, PROMPT), jnp.int32), jnp.arange(PROMPT)[None])
    with torch.no_grad():
        theirs = hf(torch.from_numpy(check)).logits.numpy()
    print(f"model: {weight_bytes / 4 / 1e6:.1f}M parameters, {weight_bytes / 1e6:.0f} MB fp32; "
          f"max |logits - HF logits| = {np.abs(np.asarray(ours) - theirs).max():.2e}")
    generate = compile_generate(graphdef, shardings, CFG, mesh, max_new_bucket=NEW, eos_id=-1, pad_id=0)
    probe = bandwidth_probe()
    bandwidth = probe(10)
    roof = bandwidth / weight_bytes
    print(f"warm-up probe: matvec read bandwidth {bandwidth / 1e9:.1f} GB/s -> roof {roof:.1f} decode steps/s "
          f"({1e3 / roof:.1f} ms per step to read the weights once)")
    for batch in (int(b) for b in _BATCHES.value):
        tokens = rng.integers(4, CFG.vocab_size, (batch, PROMPT)).astype(np.int32)
        prompts = left_pad([list(row) for row in tokens], PROMPT, 0)
        def run_jax(new: int = NEW) -> np.ndarray:
            return np.asarray(generate(params, prompts.tokens, prompts.lengths, max_new_tokens=new)["tokens"])

        ids = torch.from_numpy(tokens.astype(np.int64))

        def run_hf():
            with torch.no_grad():
                return hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=NEW,
                                   min_new_tokens=NEW, do_sample=False, eos_token_id=None, pad_token_id=0)

        same = (run_jax() == run_hf()[:, PROMPT:].numpy()).mean()  # also the warm-up
        jax_s, hf_s, first_s, bandwidths = [], [], [], []
        for _ in range(_REPEATS.value):
            bandwidths.append(probe(3))  # the roof under this round's conditions
            jax_s.append(_seconds(run_jax))
            first_s.append(_seconds(lambda: run_jax(1)))  # prefill and the first token: the same compile
            hf_s.append(_seconds(run_hf))
        jax_tps, hf_tps = batch * NEW / np.median(jax_s), batch * NEW / np.median(hf_s)
        # The roof bounds the loop's steps, each reading all weights once; prefill is compute bound.
        steps_per_s = (NEW - 1) / np.median(np.subtract(jax_s, first_s))  # per round, then the median
        roof = np.median(bandwidths) / weight_bytes
        print(f"batch {batch}: meshlm {jax_tps:.1f} tokens/s, HF generate {hf_tps:.1f} tokens/s, "
              f"ratio {jax_tps / hf_tps:.2f}x; decoding loop {steps_per_s:.1f} steps/s (after a "
              f"{np.median(first_s) * 1e3:.0f} ms prefill) = {steps_per_s / roof:.0%} of the bandwidth roof "
              f"({roof:.1f} steps/s at this batch's rounds' {np.median(bandwidths) / 1e9:.1f} GB/s); "
              f"greedy tokens equal to HF: {same:.0%} (median of {_REPEATS.value})")
    print("note: timed on a shared 2-core CPU; other processes' load makes these figures noisy")


if __name__ == "__main__":
    app.run(main)
