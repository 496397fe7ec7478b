"""A checkpoint as a serialized `jax.export` forward pass plus its weights, for JAX servers.

The artifact folder holds:
    forward.jax            jax.export bytes of logits = f(weights, tokens, segment_ids, positions),
                           with symbolic batch and length (jax.export.symbolic_shape)
    weights.safetensors    the parameters under their dotted meshlm names, streamed one at a time
    manifest.json          inputs, output, dtypes, platforms and the model config

A server needs only jax, numpy and a safetensors reader: `jax.export.deserialize`, then
`exported.call(weights_dict, tokens, segment_ids, positions)`. No meshlm code is involved.
"""

from __future__ import annotations

import json
import pathlib
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from train.export_hf import export_dtype
from train.mesh import make_mesh
from train.param_reader import CheckpointParams
from train.safetensors_file import write_safetensors
from train.state import param_shardings

FORWARD_FILE, WEIGHTS_FILE, MANIFEST_FILE = "forward.jax", "weights.safetensors", "manifest.json"
INPUTS = ("tokens", "segment_ids", "positions")


def _nest(flat: dict[str, Any]) -> dict[str, Any]:
    """{"a.b": x} -> {"a": {"b": x}}: the params tree nnx.merge takes."""
    tree: dict[str, Any] = {}
    for name, value in flat.items():
        node = tree
        *parents, last = name.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    return tree


def export_forward(source: CheckpointParams, platforms: tuple[str, ...],
                   weight_dtype: np.dtype) -> jax.export.Exported:
    """The forward pass over flat named weights, exported with symbolic (batch, length)."""
    graphdef, _, _ = param_shardings(source.config.model, make_mesh((1,)*3, jax.devices()[:1]))

    def forward(weights: dict[str, jax.Array], tokens: jax.Array, segment_ids: jax.Array,
                positions: jax.Array) -> jax.Array:
        model = nnx.merge(graphdef, _nest(weights))
        return model(tokens, segment_ids, positions)

    batch, length = jax.export.symbolic_shape("batch, length")
    ids = jax.ShapeDtypeStruct((batch, length), jnp.int32)
    weights = {name: jax.ShapeDtypeStruct(shape, weight_dtype) for name, (shape, _) in source.specs.items()}
    return jax.export.export(jax.jit(forward), platforms=platforms)(weights, ids, ids, ids)


def export_jax(source: CheckpointParams, out: str | pathlib.Path, dtype_name: str = "float32",
               platforms: tuple[str, ...] = ("cpu",)) -> pathlib.Path:
    """Writes forward.jax, weights.safetensors and manifest.json into `out`."""
    dtype = export_dtype(dtype_name)
    out = pathlib.Path(out)
    out.mkdir(parents=True, exist_ok=True)
    exported = export_forward(source, platforms, dtype)
    (out / FORWARD_FILE).write_bytes(exported.serialize())
    names = sorted(source.specs)
    specs = [(name, source.specs[name][0], dtype) for name in names]
    write_safetensors(out / WEIGHTS_FILE, specs, (source.read(name).astype(dtype) for name in names),
                      metadata={"format": "meshlm-jax"})
    manifest = {
        "call": "jax.export.deserialize(forward.jax).call(weights, tokens, segment_ids, positions)",
        "inputs": {name: {"dtype": "int32", "shape": ["batch", "length"]} for name in INPUTS},
        "output": {"name": "logits", "dtype": "float32", "shape": ["batch", "length", "vocab"]},
        "weights": {"file": WEIGHTS_FILE, "dtype": dtype_name, "count": len(names)},
        "platforms": list(exported.platforms), "step": source.step,
        "model": json.loads(json.dumps(source.meta["config"]["model"])),
        "notes": "segment_ids: 0 pads, 1..k the documents packed in a row; positions restart at 0 per document",
    }
    (out / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return out / FORWARD_FILE
