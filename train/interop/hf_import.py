"""Reads a Hugging Face folder (BertForMaskedLM or LlamaForCausalLM) into a workdir.

The workdir gets a step-0 checkpoint (params from model.safetensors, a fresh optimizer
state), config.json derived from the HF config, the folder's tokenizer (its sentencepiece
tokenizer.model, else its tokenizer.json with the special tokens its tokenizer_config.json
names: train/interop/hf_tokenizer_files.py) and its chat template (fine-tuning renders
conversations with it). Export, evaluate, decode and fill-mask read it like any training
run's; training from it (`python -m train.main --workdir=DIR`) starts from the published
weights. Settings meshlm cannot express are refused in one line. Export -> import -> export
reproduces the same tensors bit for bit.
"""

from __future__ import annotations

import json
import pathlib

import jax
import numpy as np

from data.chat_template import hf_folder_template, write_template
from train import program
from train.config import Config, ConfigError, DataConfig, validate
from train.interop.hf_families import Family, family_of_hf, from_hf
from train.interop.hf_tokenizer_files import import_tokenizer
from train.interop.safetensors_file import SafetensorsReader


def read_hf_config(hf_dir: pathlib.Path) -> dict:
    path = hf_dir / "config.json"
    if not path.is_file():
        raise ConfigError(f"--hf_dir={hf_dir} has no config.json; pass a Transformers model folder")
    return json.loads(path.read_text())


def config_from_hf(hf: dict, hf_dir: pathlib.Path) -> tuple[Family, Config]:
    """The family and a meshlm Config for an HF config.json (unsupported settings refused)."""
    family = family_of_hf(hf)
    model = family.model_config(hf)
    config = Config(name=f"imported-{hf_dir.name}", model=model,
                    data=DataConfig(seq_len=min(128, model.max_len)))
    validate(config)
    return family, config


def read_hf_params(family: Family, config: Config, weights: SafetensorsReader) -> dict:
    """Host params in meshlm's tree, from the HF tensors (tied copies checked, then dropped)."""
    from train.mesh import make_mesh
    from train.state import param_shardings

    _, abstract, _ = param_shardings(config.model, make_mesh((1, 1, 1), jax.devices()[:1]))
    flat = {".".join(str(k.key) for k in path): leaf for path, leaf in jax.tree_util.tree_leaves_with_path(abstract)}
    rules = family.rules(config.model)
    names = {rule.hf.format(i=i) for rule in rules for i in range(config.model.num_layers)}
    extra = [n for n in weights.names() if n not in names and n not in family.tied]
    if extra:
        raise ConfigError(f"{weights.path} has tensors meshlm's {family.architecture} cannot hold: {extra[:5]}")
    values = {}
    for rule in rules:
        leaf = flat[rule.ours]
        if rule.stacked:
            layers = [_hf_tensor(weights, rule.hf.format(i=i), rule.layout, leaf.shape[1:])
                      for i in range(leaf.shape[0])]
            values[rule.ours] = np.stack(layers).astype(leaf.dtype)
        else:
            values[rule.ours] = _hf_tensor(weights, rule.hf, rule.layout, leaf.shape).astype(leaf.dtype)
    for name, target in family.tied.items():
        if name in weights and name not in names and not np.array_equal(weights.read(name), weights.read(target)):
            raise ConfigError(f"{name} differs from {target}, but config.json ties them "
                              f"({family.architecture} tie_word_embeddings)")
    return jax.tree_util.tree_map_with_path(
        lambda path, _: values[".".join(str(k.key) for k in path)], abstract)


def _hf_tensor(weights: SafetensorsReader, name: str, layout: str, shape: tuple[int, ...]) -> np.ndarray:
    if name not in weights:
        raise ConfigError(f"{weights.path} lacks tensor {name}")
    try:
        return from_hf(layout, weights.read(name), shape)
    except ValueError:
        raise ConfigError(f"{weights.path}: tensor {name} has shape {list(weights.shape(name))}, "
                          f"which does not fit config.json") from None


def import_hf(hf_dir: str | pathlib.Path, workdir: str | pathlib.Path) -> Config:
    """Writes workdir/{config.json, the tokenizer, checkpoints/0} from an HF folder."""
    from train.checkpoints.manager import Checkpoints
    from train.mesh import make_mesh
    from train.optimizer import make_optimizer
    from train.state import state_layout

    hf_dir, workdir = pathlib.Path(hf_dir), pathlib.Path(workdir)
    hf_config = read_hf_config(hf_dir)
    family, config = config_from_hf(hf_config, hf_dir)
    if not (hf_dir / "model.safetensors").is_file():
        raise ConfigError(f"--hf_dir={hf_dir} has no model.safetensors (sharded or .bin checkpoints are not supported)")
    if (workdir / "checkpoints").is_dir() and any((workdir / "checkpoints").iterdir()):
        raise ConfigError(f"--workdir={workdir} already has checkpoints; import into a new workdir")
    params = read_hf_params(family, config, SafetensorsReader(hf_dir / "model.safetensors"))
    workdir = program.writable_workdir(str(workdir))
    meta = {"config": json.loads(config.to_json()), "imported_from": str(hf_dir.absolute())}
    tokenizer = import_tokenizer(hf_dir, workdir, hf_config, config.model.vocab_size)
    if tokenizer is not None:
        meta["tokenizer_sha256"] = tokenizer.sha256()
    mesh = make_mesh((1, 1, 1), jax.devices()[:1])
    tx, _ = make_optimizer(config.optim, config.train.steps)
    layout = state_layout(config.model, tx, mesh)
    device_params = jax.device_put(params, layout.shardings["params"])
    opt_state = jax.jit(tx.init, out_shardings=layout.shardings["opt_state"])(device_params)
    state = {"step": jax.device_put(np.int32(0), layout.shardings["step"]), "params": device_params,
             "opt_state": opt_state}
    template = hf_folder_template(hf_dir)
    if template is not None:
        write_template(workdir, template)
    checkpoints = Checkpoints(workdir, use_async=False)
    checkpoints.save(0, state, meta)
    checkpoints.wait()
    checkpoints.close()
    (workdir / "config.json").write_text(config.to_json())
    return config
