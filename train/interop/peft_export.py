"""A LoRA fine-tune's adapters as a PEFT folder: adapter_config.json + adapter_model.safetensors,
with the tokenizer files (chat template included) as fine-tuning tools save them beside adapters.

`peft.PeftModel.from_pretrained(base, folder)` loads it on top of the base model's export
(`export --format=hf` of the --init_from workdir, or the Transformers folder it was
imported from, which adapter_config.json then names: the base weights are frozen during
LoRA, so they are that model's). Names
follow PEFT's for LlamaForCausalLM, `base_model.model.<HF module>.lora_A.weight` [rank, in]
and `lora_B.weight` [out, rank], the HF module being the one export maps the adapted
kernel to (train/interop/hf_families.py); PEFT scales by lora_alpha / r as meshlm does.
"""

from __future__ import annotations

import json
import pathlib
from typing import Iterator

import numpy as np

from model.lora import ADAPTER
from train.checkpoints.params import CheckpointParams
from train.config import ConfigError
from train.interop.hf_export import export_dtype, write_workdir_tokenizer
from train.interop.hf_families import family_of
from train.interop.safetensors_file import TensorSpec, write_safetensors

CONFIG_FILE, WEIGHTS_FILE = "adapter_config.json", "adapter_model.safetensors"
_PREFIX = "base_model.model."


def adapter_plan(source: CheckpointParams) -> list[tuple[str, str, str, int]]:
    """(PEFT module name, our adapter path, "a" | "b", layer) for every adapter tensor, in file order."""
    plan = []
    for rule in family_of(source.config.model).rules(source.config.model):
        owner, _, leaf = rule.ours.rpartition(".")
        adapter = f"{owner}.{ADAPTER}"
        if leaf != "kernel" or f"{adapter}.a" not in source.specs:
            continue
        module = rule.hf.removesuffix(".weight")
        layers = source.specs[f"{adapter}.a"][0][0]
        plan += [(module.format(i=i), adapter, part, i) for i in range(layers) for part in ("a", "b")]
    return plan


def _peft_tensor(part: str, value: np.ndarray, rank: int) -> np.ndarray:
    """Our A [in..., r] as lora_A.weight [r, in]; our B [r, out...] as lora_B.weight [out, r]."""
    flat = value.reshape(-1, rank) if part == "a" else value.reshape(rank, -1)
    return np.ascontiguousarray(flat.T)


def export_peft(source: CheckpointParams, out: str | pathlib.Path, dtype_name: str = "float32") -> pathlib.Path:
    """Writes the PEFT adapter folder of a LoRA checkpoint into `out`; returns the safetensors path."""
    lora = source.config.model.lora
    if source.config.model.arch != "llama" or not lora.rank:
        raise ConfigError(f"--format=peft needs a LoRA fine-tune of a decoder; checkpoint step {source.step} of "
                          f"{source.workdir} has model.arch={source.config.model.arch}, model.lora.rank={lora.rank} "
                          "(export it with --format=hf)")
    dtype = export_dtype(dtype_name)
    plan = adapter_plan(source)
    specs: list[TensorSpec] = []
    for module, adapter, part, _ in plan:
        shape = _peft_tensor(part, np.empty(source.specs[f"{adapter}.{part}"][0][1:], np.int8), lora.rank).shape
        specs.append((f"{_PREFIX}{module}.lora_{part.upper()}.weight", shape, dtype))

    def tensors() -> Iterator[np.ndarray]:
        current_name, current = None, None
        for _, adapter, part, layer in plan:
            if (adapter, part) != current_name:
                current_name, current = (adapter, part), None
                current = source.read(f"{adapter}.{part}")
            yield _peft_tensor(part, current[layer], lora.rank).astype(dtype, copy=False)

    out = pathlib.Path(out)
    out.mkdir(parents=True, exist_ok=True)
    weights = out / WEIGHTS_FILE
    write_safetensors(weights, specs, tensors(), metadata={"format": "pt"})
    modules = sorted({module.rpartition(".")[2] for module, _, _, _ in plan})
    config = {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": lora.rank, "lora_alpha": lora.alpha,
        "lora_dropout": lora.dropout, "target_modules": modules, "bias": "none", "fan_in_fan_out": False,
        "use_rslora": False, "use_dora": False, "init_lora_weights": True, "inference_mode": True,
        # The base as Transformers can load it: the folder the fine-tuned workdir was imported from, if any.
        "modules_to_save": None, "base_model_name_or_path": source.meta.get("imported_from"),
    }
    (out / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    # As fine-tuning tools save adapters: AutoTokenizer(folder) works, chat template included.
    write_workdir_tokenizer(source, source.tokenizer(), out, family_of(source.config.model))
    return weights
