"""A checkpoint as a Hugging Face Transformers folder: config.json, model.safetensors, tokenizer files.

Tensors are streamed: each parameter is read from the checkpoint, converted to PyTorch
layout and written before the next one is read (see train/checkpoints/params.py and
train/interop/safetensors_file.py), so host memory stays near the largest stored array. The
tokenizer files (tokenizer.json and its configs, generation_config.json for decoders) are
train/interop/hf_tokenizer_files.py's; a workdir's chat template goes into
tokenizer_config.json as `chat_template`. A LoRA fine-tune's adapters are merged into their
kernels (a plain model for serving; train/interop/peft_export.py writes them as a PEFT folder
instead).
"""

from __future__ import annotations

import json
import pathlib
from typing import Iterator

import ml_dtypes
import numpy as np

from data.chat_template import workdir_template
from model.lora import ADAPTER, merge
from train.config import ConfigError
from train.interop.hf_families import Family, family_of, hf_shape, to_hf
from train.checkpoints.params import CheckpointParams
from train.interop.hf_tokenizer_files import special_token_ids, write_tokenizer_files
from train.interop.safetensors_file import TensorSpec, write_safetensors

EXPORT_DTYPES = {"float32": np.dtype(np.float32), "bfloat16": np.dtype(ml_dtypes.bfloat16)}


def export_dtype(name: str) -> np.dtype:
    """The numpy dtype of an export's tensors, by its --dtype name."""
    if name not in EXPORT_DTYPES:
        raise ConfigError(f"--dtype={name}; accepted: {', '.join(EXPORT_DTYPES)}")
    return EXPORT_DTYPES[name]


def check_exportable(family: Family, source: CheckpointParams) -> None:
    """Refuses, in one line naming them, models the target architecture cannot express."""
    problems = family.unsupported(source.config.model)
    if problems:
        raise ConfigError(f"{family.architecture} cannot express: " + "; ".join(problems))
    missing = [rule.ours for rule in family.rules(source.config.model) if rule.ours not in source.specs]
    if missing:
        raise ConfigError(f"checkpoint step {source.step} lacks parameters {missing} that {family.architecture} needs")


def tensor_plan(family: Family, source: CheckpointParams, dtype: np.dtype) -> list[tuple[TensorSpec, str, int | None]]:
    """(HF name, shape, dtype), our parameter and layer index, for every tensor of the export."""
    plan = []
    for rule in family.rules(source.config.model):
        shape, _ = source.specs[rule.ours]
        if rule.stacked:
            for i in range(shape[0]):
                plan.append(((rule.hf.format(i=i), hf_shape(rule.layout, shape[1:]), dtype), rule.ours, i))
        else:
            plan.append(((rule.hf, hf_shape(rule.layout, shape), dtype), rule.ours, None))
    return plan


def _hf_tensors(family: Family, source: CheckpointParams, dtype: np.dtype) -> Iterator[np.ndarray]:
    """HF tensors in plan order; a stacked parameter is read once and sliced per layer."""
    layouts = {rule.ours: rule.layout for rule in family.rules(source.config.model)}
    current_name, current = None, None
    for _, ours, index in tensor_plan(family, source, dtype):
        if ours != current_name:
            current_name, current = ours, None  # drop the previous array before reading the next
            current = read_merged(source, ours)
        value = current if index is None else current[index]
        yield to_hf(layouts[ours], value).astype(dtype, copy=False)
    del current


def read_merged(source: CheckpointParams, name: str) -> np.ndarray:
    """One parameter, with its LoRA adapter (if the checkpoint has one beside it) folded in."""
    value = source.read(name)
    owner, _, leaf = name.rpartition(".")
    adapter = f"{owner}.{ADAPTER}"
    if leaf != "kernel" or f"{adapter}.a" not in source.specs:
        return value
    lora = source.config.model.lora
    stacked = name.startswith("layers.")
    return np.asarray(merge(value, source.read(f"{adapter}.a"), source.read(f"{adapter}.b"),
                            lora.alpha / lora.rank, stacked=stacked))


def write_workdir_tokenizer(source: CheckpointParams, tokenizer, out: pathlib.Path, family: Family) -> None:
    """`source.tokenizer()`'s files into `out`, with the workdir's chat template (if any) in
    tokenizer_config.json; nothing for a workdir without a tokenizer (None)."""
    if tokenizer is None:
        return
    template = workdir_template(source.workdir)
    write_tokenizer_files(tokenizer, out, family, source.config.model.max_len,
                          extra_config={} if template is None else {"chat_template": template})


def export_hf(source: CheckpointParams, out: str | pathlib.Path, dtype_name: str = "float32") -> pathlib.Path:
    """Writes the HF folder for `source` into `out`; returns the safetensors path."""
    family = family_of(source.config.model)
    check_exportable(family, source)
    dtype = export_dtype(dtype_name)
    out = pathlib.Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = source.tokenizer()
    config = family.hf_config(source.config.model, special_token_ids(tokenizer))
    config["dtype"] = dtype_name
    (out / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    specs = [spec for spec, _, _ in tensor_plan(family, source, dtype)]
    weights = out / "model.safetensors"
    write_safetensors(weights, specs, _hf_tensors(family, source, dtype), metadata={"format": "pt"})
    write_workdir_tokenizer(source, tokenizer, out, family)
    return weights
