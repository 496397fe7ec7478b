"""A checkpoint as a serialized `jax.export` forward pass plus its weights, for JAX servers.

The artifact folder holds:
    forward.jax            jax.export bytes of logits = f(weights, tokens, segment_ids, positions),
                           with symbolic batch and length (jax.export.symbolic_shape)
    decode.jax             decoders only: one KV-cached decode step,
                           (logits, cache_k, cache_v) = f(weights, token, cache_k, cache_v, slot, start),
                           with symbolic batch and cache length; the cache is an explicit input and output
    weights.safetensors    the parameters under their dotted meshlm names, streamed one at a time
    manifest.json          inputs, outputs, dtypes, cache shape, platforms and the model config

`dtype="int8"` (decoders only) exports the decoding layout instead, as `./launch.sh decode
--dtype=int8` runs it (model/decode_kernels.py): each layer's fused kernels in int8 with a
float32 scale per output channel (`layers.N.qkv.kernel` / `layers.N.qkv.scale`, ...), the
word table too (it is the output projection), norms in float32; both functions take those
weights, compute in bfloat16 with float32 accumulation, and the KV cache is bfloat16. The
conversion reads the whole model into host memory once (a quantized export is for serving a
model that fits one host).

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
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from model.config import ModelConfig
from model.kv_cache import cache_shapes, stack_cache, unstack_cache
from train.config import ConfigError
from train.generate.autoregressive import decode_layout, decode_one
from train.interop.hf_export import export_dtype
from train.mesh import make_mesh
from train.checkpoints.params import CheckpointParams
from train.interop.safetensors_file import write_safetensors
from train.state import param_shardings

FORWARD_FILE, DECODE_FILE = "forward.jax", "decode.jax"
JAX_DTYPES = ("float32", "bfloat16", "int8")
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


def check_jax_dtype(name: str) -> str:
    """An export dtype of --format=jax, or a one-line error naming the accepted ones."""
    if name not in JAX_DTYPES:
        raise ConfigError(f"--dtype={name}; accepted for --format=jax: {', '.join(JAX_DTYPES)}")
    return name


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
    return _export_forward(lambda flat: nnx.merge(graphdef, _nest(flat)), weights, platforms)


def _export_forward(model_of: Callable[[dict], nnx.Module], weights: dict[str, jax.ShapeDtypeStruct],
                    platforms: tuple[str, ...]) -> jax.export.Exported:
    def forward(weights: dict[str, jax.Array], tokens: jax.Array, segment_ids: jax.Array,
                positions: jax.Array) -> jax.Array:
        return model_of(weights)(tokens, segment_ids, positions)

    batch, length = jax.export.symbolic_shape("batch, length")
    ids = jax.ShapeDtypeStruct((batch, length), jnp.int32)
    return jax.export.export(jax.jit(forward), platforms=platforms)(weights, ids, ids, ids)


def export_decode_step(source: CheckpointParams, platforms: tuple[str, ...],
                       weight_dtype: np.dtype) -> jax.export.Exported:
    """One KV-cached decode step of a decoder, exported with symbolic (batch, cache_length)."""
    graphdef, weights = _graphdef_and_weights(source, weight_dtype)
    return _export_decode_step(lambda flat: nnx.merge(graphdef, _nest(flat)), source.config.model, weights,
                               platforms)


def _export_decode_step(model_of: Callable[[dict], nnx.Module], cfg: ModelConfig,
                        weights: dict[str, jax.ShapeDtypeStruct], platforms: tuple[str, ...]) -> jax.export.Exported:
    def step(weights: dict[str, jax.Array], token: jax.Array, cache_k: jax.Array, cache_v: jax.Array,
             slot: jax.Array, start: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        cache = unstack_cache({"k": cache_k, "v": cache_v})
        logits, cache = decode_one(model_of(weights), cfg, token, cache, slot, start)
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
    check_jax_dtype(dtype_name)
    if dtype_name == "int8":
        return _export_decoding_layout(source, pathlib.Path(out), dtype_name, platforms)
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
    _write_manifest(out, source, exported, {"file": WEIGHTS_FILE, "dtype": dtype_name, "count": len(names)},
                    source.config.model if decoder else None)
    return out / FORWARD_FILE


def _export_decoding_layout(source: CheckpointParams, out: pathlib.Path, dtype_name: str,
                            platforms: tuple[str, ...]) -> pathlib.Path:
    """forward.jax and decode.jax over the decoding layout's weights in `dtype_name` (see above)."""
    cfg = source.config.model
    if cfg.arch != "llama":
        raise ConfigError(f"--dtype={dtype_name} exports decoders (model.arch=llama); this checkpoint holds a "
                          f"{cfg.arch} model: export it in float32 or bfloat16")
    mesh = make_mesh((1,) * 3, jax.devices()[:1])
    graphdef, _, shardings = param_shardings(cfg, mesh)
    params = jax.device_put(_nest({name: source.read(name) for name in source.specs}), shardings)
    layout = decode_layout(graphdef, shardings, cfg, mesh, dtype_name)
    flat, treedef = jax.tree_util.tree_flatten_with_path(jax.device_get(layout.convert(params)))
    del params
    names = [".".join(str(getattr(key, "key", getattr(key, "idx", key))) for key in path) for path, _ in flat]
    weights = {name: jax.ShapeDtypeStruct(value.shape, value.dtype) for name, (_, value) in zip(names, flat)}

    def model_of(flat_weights: dict[str, jax.Array]) -> nnx.Module:
        return nnx.merge(layout.graphdef, jax.tree.unflatten(treedef, [flat_weights[name] for name in names]))

    out.mkdir(parents=True, exist_ok=True)
    exported = _export_forward(model_of, weights, platforms)
    (out / FORWARD_FILE).write_bytes(exported.serialize())
    (out / DECODE_FILE).write_bytes(_export_decode_step(model_of, layout.cfg, weights, platforms).serialize())
    order = sorted(range(len(names)), key=names.__getitem__)
    write_safetensors(out / WEIGHTS_FILE, [(names[i], flat[i][1].shape, flat[i][1].dtype) for i in order],
                      (flat[i][1] for i in order), metadata={"format": "meshlm-jax", "layout": "decoding"})
    _write_manifest(out, source, exported, {"file": WEIGHTS_FILE, "dtype": dtype_name, "count": len(names),
                                            "layout": "decoding: model/decode_kernels.py (int8 kernel, float32 "
                                                      "scale per output channel)"}, layout.cfg)
    return out / FORWARD_FILE


def _write_manifest(out: pathlib.Path, source: CheckpointParams, exported: jax.export.Exported,
                    weights: dict[str, Any], decoder: ModelConfig | None) -> None:
    """manifest.json: how to call the functions, the weights file and the model config."""
    manifest = {
        "call": "jax.export.deserialize(forward.jax).call(weights, tokens, segment_ids, positions)",
        "inputs": {name: {"dtype": "int32", "shape": ["batch", "length"]} for name in INPUTS},
        "output": {"name": "logits", "dtype": "float32", "shape": ["batch", "length", "vocab"]},
        "weights": weights, "platforms": list(exported.platforms), "step": source.step,
        "model": json.loads(json.dumps(source.meta["config"]["model"])),
        "notes": "segment_ids: 0 pads, 1..k the documents packed in a row; positions restart at 0 per document",
    }
    if decoder is not None:
        manifest["decode"] = _decode_manifest(decoder)
    (out / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
