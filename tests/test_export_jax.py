"""jax.export artifact: a fresh process with only jax + numpy + safetensors reproduces the logits."""

import json
import os
import subprocess
import sys

import numpy as np

from train.interop.jax_export import export_jax
from train.checkpoints.params import CheckpointParams

from tests.data_fixtures import small_tokenizer
from tests.export_fixtures import fixed_batch, jax_logits, random_params, tiny_export_config, write_checkpoint

# Runs in a clean interpreter with the repo off sys.path: no meshlm module can be imported.
_SERVER = r"""
import json, sys
import jax, numpy as np
from safetensors.numpy import load_file
folder, batch_file, out_file = sys.argv[1:]
assert not any(m.split(".")[0] in ("model", "train", "data") for m in sys.modules)
with open(f"{folder}/forward.jax", "rb") as f:
    exported = jax.export.deserialize(bytearray(f.read()))
weights = load_file(f"{folder}/weights.safetensors")
batch = np.load(batch_file)
results = {}
for rows, length in ((3, 12), (2, 7)):  # symbolic batch and length: two shapes, one artifact
    args = [batch[k][:rows, :length] for k in ("tokens", "segment_ids", "positions")]
    results[f"{rows}x{length}"] = np.asarray(exported.call(weights, *args))
np.savez(out_file, **results)
assert not any(m.split(".")[0] in ("model", "train", "data") for m in sys.modules)
"""



def _serve(script: str, tmp_path) -> dict:
    """Runs `script` on tmp_path/jax and batch.npz in a fresh `python -I` (no meshlm); its out.npz."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "XLA_FLAGS")}
    result = subprocess.run(
        [sys.executable, "-I", "-c", script, str(tmp_path / "jax"), str(tmp_path / "batch.npz"),
         str(tmp_path / "out.npz")], cwd=tmp_path, env={**env, "JAX_PLATFORMS": "cpu"},
        capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return np.load(tmp_path / "out.npz")

def test_jax_export_reloads_in_a_fresh_process_without_meshlm(tmp_path_factory, tmp_path):
    tokenizer = small_tokenizer(tmp_path_factory)
    config = tiny_export_config(tokenizer.vocab_size)
    params = random_params(config.model, seed=3)
    workdir = write_checkpoint(tmp_path / "work", config, params, tokenizer, mesh_shape=(1, 4, 2))
    export_jax(CheckpointParams(workdir), tmp_path / "jax")
    manifest = json.loads((tmp_path / "jax" / "manifest.json").read_text())
    assert manifest["inputs"]["tokens"]["shape"] == ["batch", "length"] and manifest["platforms"] == ["cpu"]

    tokens, segment_ids, positions = fixed_batch(config.model.vocab_size, tokenizer.pad_id)
    np.savez(tmp_path / "batch.npz", tokens=tokens, segment_ids=segment_ids, positions=positions)
    served = _serve(_SERVER, tmp_path)
    for rows, length in ((3, 12), (2, 7)):
        args = (tokens[:rows, :length], segment_ids[:rows, :length], positions[:rows, :length])
        want = jax_logits(config, params, *args)
        np.testing.assert_allclose(served[f"{rows}x{length}"], want, atol=1e-5, rtol=1e-5)


# The decoder's artifact in a clean interpreter: forward logits on a left-padded batch, the same
# logits from prefill-by-decode-steps (KV cache carried by the caller), then greedy decoding whose
# tokens the forward pass over the extended rows agrees with.
_DECODER_SERVER = r"""
import json, sys
import jax, numpy as np
from safetensors.numpy import load_file
folder, batch_file, out_file = sys.argv[1:]
load = lambda name: jax.export.deserialize(bytearray(open(f"{folder}/{name}", "rb").read()))
forward, decode = load("forward.jax"), load("decode.jax")
manifest = json.load(open(f"{folder}/manifest.json"))
weights = load_file(f"{folder}/weights.safetensors")
batch = np.load(batch_file)
tokens, start = batch["tokens"], batch["start"]
rows, length = tokens.shape
new, cache_length = 4, length + 6  # a cache longer than what is written: slots past `slot` stay unseen

def layout(tokens):
    slots = np.arange(tokens.shape[1])[None, :]
    return (slots >= start[:, None]).astype(np.int32), np.maximum(slots - start[:, None], 0).astype(np.int32)

def zero_cache(name):  # the manifest's shape, its symbols filled in
    sizes = {"batch": rows, "cache_length": cache_length}
    return np.zeros([sizes.get(d, d) for d in manifest["decode"]["inputs"][name]["shape"]], np.float32)

cache_k, cache_v = zero_cache("cache_k"), zero_cache("cache_v")
stepped = []
for slot in range(length):  # prefill by decode steps
    logits, cache_k, cache_v = decode.call(weights, tokens[:, slot], cache_k, cache_v, np.int32(slot), start)
    stepped.append(np.asarray(logits))
generated = [np.argmax(stepped[-1], axis=-1).astype(np.int32)]
for slot in range(length, length + new - 1):  # greedy decoding
    logits, cache_k, cache_v = decode.call(weights, generated[-1], cache_k, cache_v, np.int32(slot), start)
    generated.append(np.argmax(np.asarray(logits), axis=-1).astype(np.int32))
extended = np.concatenate([tokens, np.stack(generated, axis=1)], axis=1)
results = {"stepped": np.stack(stepped, axis=1), "generated": np.stack(generated, axis=1),
           "forward": np.asarray(forward.call(weights, tokens, *layout(tokens))),
           "forward_extended": np.asarray(forward.call(weights, extended, *layout(extended))),
           "cache_k_shape": np.asarray(cache_k.shape), "cache_v_shape": np.asarray(cache_v.shape)}
np.savez(out_file, **results)
assert not any(m.split(".")[0] in ("model", "train", "data") for m in sys.modules)
"""


def test_decoder_jax_export_decodes_step_by_step_in_a_fresh_process(tmp_path_factory, tmp_path):
    tokenizer = small_tokenizer(tmp_path_factory)
    config = tiny_export_config(tokenizer.vocab_size, arch="llama", num_kv_heads=2, layer_norm_eps=1e-5,
                                tie_embeddings=False, init_std=0.1)
    params = random_params(config.model, seed=4)
    workdir = write_checkpoint(tmp_path / "work", config, params, tokenizer, mesh_shape=(2, 2, 2))
    export_jax(CheckpointParams(workdir), tmp_path / "jax")
    manifest = json.loads((tmp_path / "jax" / "manifest.json").read_text())
    assert manifest["decode"]["inputs"]["cache_k"]["shape"] == [2, "batch", 2, 8, "cache_length"]
    assert manifest["decode"]["inputs"]["cache_v"]["shape"] == [2, "batch", 2, "cache_length", 8]

    # Left-padded prompts of 12, 9 and 6 tokens, as train/generate/autoregressive.py lays them out.
    rng = np.random.default_rng(2)
    tokens = rng.integers(5, config.model.vocab_size, (3, 12)).astype(np.int32)
    start = np.array([0, 3, 6], np.int32)
    tokens[np.arange(12)[None, :] < start[:, None]] = tokenizer.pad_id
    np.savez(tmp_path / "batch.npz", tokens=tokens, start=start)
    served = _serve(_DECODER_SERVER, tmp_path)
    assert served["cache_k_shape"].tolist() == [2, 3, 2, 8, 18]
    assert served["cache_v_shape"].tolist() == [2, 3, 2, 18, 8]

    real = np.arange(12)[None, :] >= start[:, None]
    segment_ids = real.astype(np.int32)
    positions = np.maximum(np.arange(12)[None, :] - start[:, None], 0).astype(np.int32)
    want = jax_logits(config, params, tokens, segment_ids, positions)
    np.testing.assert_allclose(served["forward"][real], want[real], atol=1e-5, rtol=1e-5)
    assert np.abs(want[real]).max() > 1.0
    np.testing.assert_allclose(served["stepped"][real], want[real], atol=1e-4, rtol=1e-4)
    # Each greedy token is the forward pass's argmax over the row extended with the earlier ones.
    extended = served["forward_extended"]
    np.testing.assert_array_equal(np.argmax(extended[:, 11:15], axis=-1), served["generated"])
