"""jax.export artifact: a fresh process with only jax + numpy + safetensors reproduces the logits."""

import json
import os
import subprocess
import sys

import numpy as np

from train.export_jax import export_jax
from train.param_reader import CheckpointParams

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
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "XLA_FLAGS")}
    result = subprocess.run(
        [sys.executable, "-I", "-c", _SERVER, str(tmp_path / "jax"), str(tmp_path / "batch.npz"),
         str(tmp_path / "out.npz")], cwd=tmp_path, env={**env, "JAX_PLATFORMS": "cpu"},
        capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    served = np.load(tmp_path / "out.npz")
    for rows, length in ((3, 12), (2, 7)):
        args = (tokens[:rows, :length], segment_ids[:rows, :length], positions[:rows, :length])
        want = jax_logits(config, params, *args)
        np.testing.assert_allclose(served[f"{rows}x{length}"], want, atol=1e-5, rtol=1e-5)
