"""A checkpoint as a serialized `jax.export` forward pass plus its weights, for JAX servers.

The artifact folder holds:
    forward.jax            jax.export bytes of logits = f(weights, tokens, segment_ids, positions),
                           with symbolic batch and length (jax.export.symbolic_shape)
    decode.jax             decoders only: one KV-cached decode step,
                           (logits, cache_k, cache_v) = f(weights, token, cache_k, cache_v, slot, start),
                           with symbolic batch and cache length; the cache is an explicit input and output
    weights.safetensors    the parameters under their dotted meshlm names, streamed one at a time
    manifest.json          inputs, outputs, dtypes, cache shape, platforms and the model config

A server needs only jax, numpy and a safetensors reader: `jax.export.deserialize`, then
`exported.call(weights_dict, tokens, segment_ids, positions)`. No meshlm code is involved.
The decode step follows train/generate/autoregressive.py: rows are left-padded, row b's first real token
sits at cache slot start[b], every row writes slot `slot` and sees slots start[b]..slot.
Prefill is decode steps over the prompt slots from a zero cache (or any faster path that
fills the same cache).
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from model.config import ModelConfig
from model.kv_cache import cache_shapes, stack_cache, unstack_cache
from train.generate.autoregressive import decode_one
from train.interop.hf_export import export_dtype
from train.mesh import make_mesh
from train.checkpoints.params import CheckpointParams
from train.interop.safetensors_file import write_safetensors
from train.state import param_shardings

FORWARD_FILE, DECODE_FILE = "forward.jax", "decode.jax"
WEIGHTS_FILE, MANIFEST_FILE = "weights.safetensors", "manifest.json"
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


def _graphdef_and_weights(source: CheckpointParams, weight_dtype: np.dtype) -> tuple[Any, dict[str, Any]]:
    """The model's graph and the flat weights' abstract values, as every exported function takes them.

    Attention runs the XLA path: it serves the symbolic length and every platform (the
    fused kernels need a concrete length and their own chip).
    """
    model_cfg = dataclasses.replace(source.config.model, attention_impl="xla")
    graphdef, _, _ = param_shardings(model_cfg, make_mesh((1,)*3, jax.devices()[:1]))
    weights = {name: jax.ShapeDtypeStruct(shape, weight_dtype) for name, (shape, _) in source.specs.items()}
    return graphdef, weights


def export_forward(source: CheckpointParams, platforms: tuple[str, ...],
                   weight_dtype: np.dtype) -> jax.export.Exported:
    """The forward pass over flat named weights, exported with symbolic (batch, length)."""
    graphdef, weights = _graphdef_and_weights(source, weight_dtype)

    def forward(weights: dict[str, jax.Array], tokens: jax.Array, segment_ids: jax.Array,
                positions: jax.Array) -> jax.Array:
        model = nnx.merge(graphdef, _nest(weights))
        return model(tokens, segment_ids, positions)

    batch, length = jax.export.symbolic_shape("batch, length")
    ids = jax.ShapeDtypeStruct((batch, length), jnp.int32)
    return jax.export.export(jax.jit(forward), platforms=platforms)(weights, ids, ids, ids)


def export_decode_step(source: CheckpointParams, platforms: tuple[str, ...],
                       weight_dtype: np.dtype) -> jax.export.Exported:
    """One KV-cached decode step of a decoder, exported with symbolic (batch, cache_length)."""
    cfg = source.config.model
    graphdef, weights = _graphdef_and_weights(source, weight_dtype)

    def step(weights: dict[str, jax.Array], token: jax.Array, cache_k: jax.Array, cache_v: jax.Array,
             slot: jax.Array, start: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        model = nnx.merge(graphdef, _nest(weights))
        logits, cache = decode_one(model, cfg, token, unstack_cache({"k": cache_k, "v": cache_v}), slot, start)
        stacked = stack_cache(cache)
        return logits, stacked["k"], stacked["v"]

    batch, length = jax.export.symbolic_shape("batch, cache_length")
    rows = jax.ShapeDtypeStruct((batch,), jnp.int32)
    k, v = (jax.ShapeDtypeStruct((cfg.num_layers, *shape), jnp.dtype(cfg.dtype))
            for shape in cache_shapes(cfg, batch, length).values())
    slot = jax.ShapeDtypeStruct((), jnp.int32)
    return jax.export.export(jax.jit(step), platforms=platforms)(weights, rows, k, v, slot, rows)


def _decode_manifest(cfg: ModelConfig) -> dict[str, Any]:
    """How to call decode.jax: its inputs, outputs and the cache layout."""
    k, v = ({"dtype": cfg.dtype, "shape": [cfg.num_layers, *shape]}  # model/kv_cache.py, stacked
            for shape in cache_shapes(cfg, "batch", "cache_length").values())
    return {
        "file": DECODE_FILE,
        "call": "jax.export.deserialize(decode.jax).call(weights, token, cache_k, cache_v, slot, start)",
        "inputs": {"token": {"dtype": "int32", "shape": ["batch"]}, "cache_k": k, "cache_v": v,
                   "slot": {"dtype": "int32", "shape": []}, "start": {"dtype": "int32", "shape": ["batch"]}},
        "outputs": {"logits": {"dtype": "float32", "shape": ["batch", "vocab"]}, "cache_k": k,
                    "cache_v": v},
        "notes": "start a zero cache; rows are left-padded: row b's first real token is at slot start[b] "
                 "(its position 0); each call writes `token` at `slot` (the same for every row) and "
                 "returns the next-token logits; slot < cache_length",
    }


def export_jax(source: CheckpointParams, out: str | pathlib.Path, dtype_name: str = "float32",
               platforms: tuple[str, ...] = ("cpu",)) -> pathlib.Path:
    """Writes forward.jax, weights.safetensors and manifest.json into `out`."""
    dtype = export_dtype(dtype_name)
    out = pathlib.Path(out)
    out.mkdir(parents=True, exist_ok=True)
    exported = export_forward(source, platforms, dtype)
    (out / FORWARD_FILE).write_bytes(exported.serialize())
    decoder = source.config.model.arch == "llama"
    if decoder:
        (out / DECODE_FILE).write_bytes(export_decode_step(source, platforms, dtype).serialize())
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
    if decoder:
        manifest["decode"] = _decode_manifest(source.config.model)
    (out / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return out / FORWARD_FILE
