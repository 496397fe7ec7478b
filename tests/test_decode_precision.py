"""Decoding with bfloat16 and int8 weights (model/decode_kernels.py) on a trained decoder.

The decoder learned a Markov chain (tests/train_fixtures.py `markov_decoder`): its greedy
next token beats the runner-up by >= 2.4 nats on the chains the test scores, while holding
the weights in bfloat16 or int8 moves its logits by < 0.05 (0.018 and 0.047; printed by the test).
So a correct reduced-precision decoder must pick the same tokens as float32 almost
everywhere; the threshold leaves room for a rare near-tie, and a wrong kernel, scale or
cache layout is far below it.
"""

import dataclasses
import json
import os
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from model.decode_kernels import DecodeKernel
from train.generate.autoregressive import compile_generate, left_pad
from train.mesh import make_mesh
from train.state import model_factory, param_shardings

from tests.train_fixtures import markov_decoder, markov_rows

NEW, EOS, PAD = 16, -1, 0


@pytest.fixture(scope="module")
def trained():
    return markov_decoder()


def _generate(cfg, params, dtype, prompts):
    mesh = make_mesh((1, 1, 1), jax.devices()[:1])
    graphdef, _, shardings = param_shardings(cfg, mesh)
    run = compile_generate(graphdef, shardings, cfg, mesh, max_new_bucket=NEW, eos_id=EOS, pad_id=PAD, dtype=dtype)
    return run, np.asarray(run(params, prompts.tokens, prompts.lengths)["tokens"])


def _decode_model(cfg, params, dtype):
    """The trained model in the decoding layout with kernels held in `dtype`."""
    model = nnx.merge(nnx.graphdef(model_factory(dataclasses.replace(
        cfg, dtype="float32" if dtype == "float32" else "bfloat16"))(0)), params)
    model.to_decode_layout(dtype)
    return model


def test_bf16_and_int8_decoding_pick_float32s_tokens(trained):
    cfg, params, successor = trained
    chains = markov_rows(successor, 6, 5, seed=1234)
    prompts = left_pad([list(row[:n]) for row, n in zip(chains, (5, 3, 1, 4, 2, 5))], 8, PAD)
    out = {dtype: _generate(cfg, params, dtype, prompts)[1] for dtype in ("float32", "bfloat16", "int8")}
    # The float32 decoder follows the chain it learned: the tokens mean something.
    follows = out["float32"][:, 1:] == successor[out["float32"][:, :-1]]
    assert follows.mean() >= 0.9, follows.mean()
    assert (out["bfloat16"] == out["float32"]).mean() >= 0.95, out
    assert (out["int8"] == out["float32"]).mean() >= 0.95, out

    # Teacher-forced logits over real chains: the perturbation the thresholds rely on.
    rows = markov_rows(successor, 4, 24, seed=99)
    ids, seg, pos = jnp.asarray(rows), jnp.ones(rows.shape, jnp.int32), jnp.broadcast_to(jnp.arange(24), rows.shape)
    logits = {d: np.asarray(_decode_model(cfg, params, d)(ids, seg, pos)) for d in ("float32", "bfloat16", "int8")}
    top2 = np.sort(logits["float32"], axis=-1)[..., -2:]
    shift = {d: np.abs(logits[d] - logits["float32"]).max() for d in ("bfloat16", "int8")}
    print(f"float32 top-1 margin >= {(top2[..., 1] - top2[..., 0]).min():.2f} nats; max logit shift {shift}")
    assert max(shift.values()) < 0.5, shift
    for d in ("bfloat16", "int8"):
        np.testing.assert_array_equal(logits[d].argmax(-1), logits["float32"].argmax(-1))


def _while_bodies(hlo: str) -> str:
    text = ""
    for body in re.findall(r"body=%([\w.\-]+)", hlo):
        start = hlo.index(f"\n%{body} ")
        text += hlo[start:hlo.index("\n}", start)]
    return text


@pytest.mark.parametrize("dtype", ["bfloat16", "int8"])
def test_the_compiled_loop_reads_the_kernels_in_their_dtype(trained, dtype):
    """The loop's kernels are bf16 / int8 arrays, and no step makes a wider copy of any of them."""
    cfg, params, _ = trained
    prompts = left_pad([[5, 6, 7], [8]], 4, PAD)
    run, _ = _generate(cfg, params, dtype, prompts)
    decoded = run.layout.convert(params)
    kernels = [leaf for path, leaf in jax.tree_util.tree_leaves_with_path(decoded)
               if jax.tree_util.keystr(path).endswith("['kernel']")]
    assert len(kernels) == 4 * cfg.num_layers + 1  # qkv, out, gate_up, down per layer; the tied word table
    assert {str(k.dtype) for k in kernels} == {dtype}
    body = _while_bodies(run.lower(params, prompts.tokens, prompts.lengths).compile().as_text())
    assert body
    sizes = {int(np.prod(k.shape)) for k in kernels}
    wider = "f32" if dtype == "bfloat16" else "(?:f32|bf16)"
    wide = {shape for shape in re.findall(wider + r"\[([\d,]+)\]", body)
            if int(np.prod([int(d) for d in shape.split(",")])) in sizes}
    assert not wide, f"the decode step holds wider copies of kernels: {wide}"
    # The output projection runs on YNNPACK with the word table as its first operand ([vocab, rows]),
    # as int8 x int8 -> int32 for int8 kernels: the form that reads the kernel fastest.
    accumulator = "f32" if dtype == "bfloat16" else "s32"
    assert re.search(rf"{accumulator}\[{cfg.vocab_size},\d+\]\S* fusion\(.*__ynn_fusion", body), dtype


def test_int8_jax_export_loads_and_decodes_in_a_fresh_process(trained, tmp_path_factory, tmp_path):
    from train.checkpoints.params import CheckpointParams
    from train.interop.jax_export import export_jax

    from tests.data_fixtures import small_tokenizer
    from tests.export_fixtures import tiny_export_config, write_checkpoint

    cfg, params, successor = trained
    tokenizer = small_tokenizer(tmp_path_factory)
    config = tiny_export_config(cfg.vocab_size)
    config.model = cfg
    workdir = write_checkpoint(tmp_path / "work", config, params, tokenizer, mesh_shape=(1, 1, 1))
    export_jax(CheckpointParams(workdir), tmp_path / "jax", "int8")
    manifest = json.loads((tmp_path / "jax" / "manifest.json").read_text())
    assert manifest["weights"]["dtype"] == "int8" and manifest["decode"]["inputs"]["cache_k"]["dtype"] == "bfloat16"

    rows = markov_rows(successor, 2, 8, seed=7)
    np.save(tmp_path / "rows.npy", rows)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "XLA_FLAGS")}
    result = subprocess.run([sys.executable, "-I", "-c", _INT8_SERVER, str(tmp_path / "jax"), str(tmp_path)],
                            cwd=tmp_path, env={**env, "JAX_PLATFORMS": "cpu"}, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    served = np.load(tmp_path / "out.npz")
    assert served["int8_kernels"] == 4 * cfg.num_layers + 1
    seg, pos = np.ones_like(rows), np.broadcast_to(np.arange(8, dtype=np.int32), rows.shape)
    want = np.asarray(_decode_model(cfg, params, "int8")(jnp.asarray(rows), jnp.asarray(seg), jnp.asarray(pos)))
    np.testing.assert_allclose(served["forward"], want, atol=2e-2)
    # Step by step from a zero cache: the same next-token choices as the forward pass.
    np.testing.assert_array_equal(served["stepped"].argmax(-1), want.argmax(-1))


# Forward logits and decode steps of the int8 artifact, in an interpreter with no meshlm code.
_INT8_SERVER = r"""
import json, sys
import jax, jax.numpy as jnp, numpy as np
from safetensors.numpy import load_file
folder, work = sys.argv[1:]
load = lambda name: jax.export.deserialize(bytearray(open(f"{folder}/{name}", "rb").read()))
forward, decode = load("forward.jax"), load("decode.jax")
manifest = json.load(open(f"{folder}/manifest.json"))
weights = load_file(f"{folder}/weights.safetensors")
rows = np.load(f"{work}/rows.npy")
batch, length = rows.shape
seg, pos = np.ones_like(rows), np.broadcast_to(np.arange(length, dtype=np.int32), rows.shape).copy()
sizes = {"batch": batch, "cache_length": length + 2}
cache = {name: jnp.zeros([sizes.get(d, d) for d in manifest["decode"]["inputs"][name]["shape"]],
                         manifest["decode"]["inputs"][name]["dtype"]) for name in ("cache_k", "cache_v")}
k, v, start, stepped = cache["cache_k"], cache["cache_v"], np.zeros(batch, np.int32), []
for slot in range(length):
    logits, k, v = decode.call(weights, rows[:, slot], k, v, np.int32(slot), start)
    stepped.append(np.asarray(logits))
np.savez(f"{work}/out.npz", forward=np.asarray(forward.call(weights, rows, seg, pos)),
         stepped=np.stack(stepped, axis=1),
         int8_kernels=sum(1 for name, w in weights.items() if w.dtype == np.int8 and name.endswith(".kernel")))
"""


def test_int8_kernel_has_a_scale_per_output_channel():
    """Rows of very different magnitudes each keep ~8 bits: every error is within half its row's step."""
    rng = np.random.default_rng(0)
    magnitudes = np.array([30.0, 1.0, 1e-3], np.float32)[:, None]
    kernel = jnp.asarray(rng.standard_normal((3, 64)).astype(np.float32) * magnitudes)
    held = DecodeKernel(kernel, (None, None), 1, "int8")
    assert held.kernel[...].dtype == jnp.int8 and held.scale[...].shape == (3,)
    error = np.abs(np.asarray(held.kernel[...], np.float32) * np.asarray(held.scale[...])[:, None] - kernel)
    assert (error.max(axis=1) <= 0.5 * np.asarray(held.scale[...]) * (1 + 1e-5)).all()
    x = jnp.asarray(rng.standard_normal((5, 64)), jnp.bfloat16)
    dequantized = np.asarray(held.kernel[...], np.float32) * np.asarray(held.scale[...])[:, None]
    exact = np.asarray(x, np.float32) @ dequantized.T  # weight-only: the rows as given, the kernel as held
    error = np.abs(np.asarray(held(x, jnp.float32)) - exact)  # per output channel: its own magnitude
    assert (error <= 1e-4 * np.abs(exact).max(axis=0)).all(), error.max(axis=0) / np.abs(exact).max(axis=0)


def _cli(capsys, monkeypatch, module, *args) -> str:
    """Runs `python -m MODULE ARGS` in this process; its one-line error (exit status 2)."""
    from absl import flags

    from train import program

    monkeypatch.setattr(sys, "argv", [module.__name__, *args])
    flags.FLAGS.unparse_flags()  # absl keeps a flag's last value when a later argv omits it
    with pytest.raises(SystemExit) as info:
        program.run(module.main)
    err = capsys.readouterr().err
    assert info.value.code == 2 and err.startswith("error: ") and err.strip().count("\n") == 0, err
    return err


def test_bad_dtypes_get_one_line(tmp_path_factory, tmp_path, capsys, monkeypatch):
    from train.generate import decode_cli
    from train.interop import export_cli

    from tests.data_fixtures import small_tokenizer
    from tests.export_fixtures import random_params, tiny_export_config, write_checkpoint

    err = _cli(capsys, monkeypatch, decode_cli, f"--workdir={tmp_path}", "--prompt=def", "--dtype=int4")
    assert "--dtype=int4; accepted: float32, bfloat16, int8" in err
    tokenizer = small_tokenizer(tmp_path_factory)
    config = tiny_export_config(tokenizer.vocab_size)  # a BERT
    workdir = write_checkpoint(tmp_path / "bert", config, random_params(config.model), tokenizer, mesh_shape=(1, 1, 1))
    out = f"--out={tmp_path / 'out'}"
    err = _cli(capsys, monkeypatch, export_cli, f"--workdir={workdir}", "--format=hf", out, "--dtype=int8")
    assert "--dtype=int8; accepted: float32, bfloat16" in err
    err = _cli(capsys, monkeypatch, export_cli, f"--workdir={workdir}", "--format=jax", out, "--dtype=float16")
    assert "--dtype=float16; accepted for --format=jax: float32, bfloat16, int8" in err
    err = _cli(capsys, monkeypatch, export_cli, f"--workdir={workdir}", "--format=jax", out, "--dtype=int8")
    assert "--dtype=int8 exports decoders (model.arch=llama)" in err and "bert" in err
    assert not (tmp_path / "out").exists()
