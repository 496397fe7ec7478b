"""Supervised fine-tuning of a decoder, full or LoRA, through the pretraining loop (train/loop.py).

The run is the pretraining loop with two things changed: the data is `data.format=sft`
rows (prompt/response or chat records rendered by the chat template, loss on the responses
only: data/sft_examples.py), and a fresh run starts from the latest checkpoint of
--init_from (a decoder workdir, or one `import_hf` made from a Transformers folder),
restored onto this run's mesh whatever mesh wrote it. Resume, SIGTERM saves, evals,
metrics and checkpoints are the loop's; a workdir with checkpoints resumes from them.

The model's sizes come from --init_from; the config decides only what may change for
fine-tuning: dropout, dtype, remat, scan_layers and `model.lora` (rank > 0: adapters
train, the base stays frozen). The workdir gets --init_from's tokenizer and chat template
(or data.chat_template's file, copied), so decode --chat and export find them there.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import Any, Callable

import jax
from jax.sharding import Mesh

from data import remote
from data.chat_template import TEMPLATE_FILE, load_template, workdir_template, write_template
from data.tokenizer import copy_tokenizer, open_tokenizer, tokenizer_file
from model.config import ModelConfig
from model.lora import ADAPTER, merge
from train.checkpoints.manager import Checkpoints
from train.checkpoints.params import restore_params
from train.config import Config, ConfigError, config_from_json, validate
from train.loop import train
from train.state import param_shardings
from train.trainable import has_adapters, join, split_trainable

# What fine-tuning may choose for itself; every other model field is the pretrained model's.
TRAINING_FIELDS = ("dropout", "attention_dropout", "dtype", "remat", "scan_layers", "lora")


class PretrainedDecoder:
    """The latest checkpoint of a decoder workdir: its model, tokenizer, chat template and weights."""

    def __init__(self, path: str):
        self.workdir = remote.as_path(path)  # a gs:// workdir too
        if not (self.workdir / "checkpoints").is_dir():
            raise ConfigError(f"--init_from={path} has no checkpoints/; pass a decoder's workdir (a pretraining "
                              "run, or ./launch.sh import_hf of a Transformers folder)")
        checkpoints = Checkpoints(self.workdir, use_async=False)
        self.step = checkpoints.latest_step()
        if self.step is None:
            checkpoints.close()
            raise ConfigError(f"--init_from={path} has no checkpoints yet; pretrain first")
        self.meta = checkpoints.restore_meta(self.step)
        checkpoints.close()
        self.config = config_from_json(json.dumps(self.meta["config"]))
        if self.config.model.arch != "llama" or "labels" in self.meta:
            raise ConfigError(f"--init_from={path} holds a {self.config.model.arch} "
                              f"{'classifier' if 'labels' in self.meta else 'model'}; supervised fine-tuning "
                              "needs a decoder (model.arch=llama)")
        tokenizer = tokenizer_file(self.workdir)
        if tokenizer is None:
            raise ConfigError(f"--init_from={path} has no tokenizer.model or tokenizer.json; fine-tuning needs the "
                              "tokenizer the model was trained with")
        self.tokenizer = tokenizer
        if self.meta.get("tokenizer_sha256") not in (None, open_tokenizer(tokenizer).sha256()):
            raise ConfigError(f"--init_from={path}: {tokenizer.name} is not the one step {self.step} was trained with")

    def describe(self) -> str:
        return f"{self.workdir} step {self.step}"

    def start_params(self, fresh: dict[str, Any], mesh: Mesh) -> dict[str, Any]:
        """The pretrained weights on `mesh` in place of `fresh`'s base weights (fresh adapters kept)."""
        model = self.config.model
        _, abstract, shardings = param_shardings(model, mesh)
        target = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), abstract, shardings)
        pretrained = restore_params(self.workdir, self.step, target)
        if has_adapters(pretrained):  # a LoRA fine-tune as the start: its adapters folded into the base
            pretrained = merge_adapters(pretrained, model.lora.alpha / model.lora.rank)
        adapters = split_trainable(fresh)[0] if has_adapters(fresh) else {}
        params = join(adapters, pretrained)
        if jax.tree.structure(params) != jax.tree.structure(fresh):
            raise ConfigError(f"--init_from={self.workdir} step {self.step} does not hold the parameters of "
                              "the model being fine-tuned")
        return params


def merge_adapters(params: dict[str, Any], scale: float) -> dict[str, Any]:
    """The params with every projection's adapter folded into its (stacked) kernel, and dropped."""
    merged = {}
    for key, value in params.items():
        if isinstance(value, dict) and ADAPTER in value:
            adapter = value[ADAPTER]
            kernel = merge(value["kernel"], adapter["a"], adapter["b"], scale, stacked=True)
            value = {**{k: v for k, v in value.items() if k != ADAPTER},
                     "kernel": jax.device_put(kernel, value["kernel"].sharding)}
        elif isinstance(value, dict):
            value = merge_adapters(value, scale)
        merged[key] = value
    return merged


def fine_tune_config(config: Config, base: ModelConfig) -> tuple[Config, list[str]]:
    """`config` with the base model's sizes (and the fine-tuning fields of its own); the ignored differences."""
    model = dataclasses.replace(base, **{f: getattr(config.model, f) for f in TRAINING_FIELDS})
    ignored = [f"model.{f}={getattr(config.model, f)} (the model has {getattr(base, f)})"
               for f in ("vocab_size", "hidden", "num_layers", "num_heads", "mlp_dim", "arch")
               if getattr(config.model, f) != getattr(base, f)]
    tuned = dataclasses.replace(config, model=model, data=dataclasses.replace(config.data, format="sft"))
    validate(tuned)
    return tuned, ignored


def fine_tune(config: Config, workdir: pathlib.Path, init_from: str | None,
              log: Callable[[str], None] = print) -> dict[str, float]:
    """Fine-tunes (or resumes) to config.train.steps; returns the final held-out response-token metrics."""
    saved = _saved_run(workdir)
    pretrained = None
    if saved is None:
        if not init_from:
            raise ConfigError("--init_from is required to start fine-tuning: a decoder's workdir (pretrained, or "
                              "made by ./launch.sh import_hf from a Transformers folder)")
        pretrained = PretrainedDecoder(init_from)
        base = pretrained.config.model
        meta = {"init_from": str(remote.absolute(pretrained.workdir)), "init_from_step": pretrained.step,
                "imported_from": pretrained.meta.get("imported_from")}  # the Transformers folder, if one
    else:
        base, meta = saved
    config, ignored = fine_tune_config(config, base)
    template = _template_file(config, workdir, resuming=saved is not None)
    if template is not None:  # kept in the workdir, so the saved config needs no file but the workdir's
        config = dataclasses.replace(config, data=dataclasses.replace(config.data, chat_template=""))
    if jax.process_index() == 0:
        if not remote.is_url(workdir):  # a bucket's folders need no making
            workdir.mkdir(parents=True, exist_ok=True)
        if pretrained is not None:
            _adopt(pretrained, workdir, keep_template=template is None)
        if template is not None:
            write_template(workdir, template)
    start = f"from {pretrained.describe()}" if pretrained else f"resuming {workdir}"
    lora = config.model.lora
    log(f"supervised fine-tuning {start}: " + (f"LoRA rank {lora.rank}, alpha {lora.alpha:g} on "
                                               f"{','.join(lora.targets)}; the base frozen" if lora.rank else
                                               "every weight trains")
        + (f"; sizes from the model, not the config: {'; '.join(ignored)}" if ignored else ""))
    return train(config, workdir, start_params=pretrained.start_params if pretrained else None, meta=meta)


def _saved_run(workdir: pathlib.Path) -> tuple[ModelConfig, dict[str, Any]] | None:
    """The model and starting point recorded by the workdir's newest readable checkpoint (a resume), or None."""
    if not (workdir / "checkpoints").is_dir():
        return None
    checkpoints = Checkpoints(workdir, use_async=False)
    try:
        for step in sorted(checkpoints.all_steps(), reverse=True):
            try:
                meta = checkpoints.restore_meta(step)
            except Exception:  # a damaged step: the loop reports it and falls back; so do we
                continue
            model = config_from_json(json.dumps(meta["config"])).model
            return model, {key: meta[key] for key in ("init_from", "init_from_step", "imported_from") if key in meta}
        return None
    finally:
        checkpoints.close()


def _template_file(config: Config, workdir: pathlib.Path, resuming: bool) -> str | None:
    """The text of data.chat_template's file (None when unset); a resume must keep the workdir's."""
    if not config.data.chat_template:
        return None
    text = load_template(config.data.chat_template)
    kept = workdir_template(workdir)
    if resuming and kept is not None and kept != text:
        raise ConfigError(f"data.chat_template={config.data.chat_template} differs from the template {workdir} was "
                          f"fine-tuned with ({TEMPLATE_FILE}); drop the flag to resume, or use a new --workdir")
    return text


def _adopt(pretrained: PretrainedDecoder, workdir: pathlib.Path, keep_template: bool) -> None:
    """Copies the pretrained tokenizer (and chat template) into the workdir, so it stands alone."""
    copy_tokenizer(open_tokenizer(pretrained.tokenizer), workdir)
    template = pretrained.workdir / TEMPLATE_FILE
    if keep_template and template.is_file() and not (workdir / TEMPLATE_FILE).is_file():
        (workdir / TEMPLATE_FILE).write_text(template.read_text(encoding="utf-8"), encoding="utf-8")
