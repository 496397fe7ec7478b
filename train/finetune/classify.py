"""Class probabilities from a fine-tuned workdir's checkpoint, for texts (or text pairs)."""

from __future__ import annotations

import json
import pathlib

import numpy as np

from data.tasks import Example, LabelMap, encode_examples
from data.tokenizer import open_tokenizer, tokenizer_file
from train.checkpoints.manager import Checkpoints
from train.config import ConfigError, config_from_json
from train.finetune.task_data import LABELS_FILE
from train.finetune.classifier_steps import INPUT_KEYS, classifier_factory, compile_predict, finetune_optimizer
from train.mesh import make_mesh, to_global
from train.checkpoints.params import resolve_step
from train.state import state_layout


def predict(workdir: str | pathlib.Path, texts: list[str], text_pairs: list[str] | None = None,
            step: int | None = None) -> tuple[list[str], np.ndarray]:
    """(label names, probabilities [N, num_labels]) of a fine-tuned checkpoint for the texts."""
    step = resolve_step(workdir, step)
    workdir = pathlib.Path(workdir)
    checkpoints = Checkpoints(workdir, use_async=False)
    meta = checkpoints.restore_meta(step)
    if "labels" not in meta:
        raise ConfigError(f"--workdir={workdir} is a pretraining run, not a fine-tuned classifier")
    config = config_from_json(json.dumps(meta["config"]))
    labels = LabelMap.load(workdir / LABELS_FILE).names
    mesh = make_mesh((1, 1, 1))
    factory = classifier_factory(config.model, len(labels), config.task)
    tx, _ = finetune_optimizer(config.optim, 1, config.task.body_learning_rate_ratio)
    layout = state_layout(config.model, tx, mesh, factory)
    state, _ = checkpoints.restore(step, layout.abstract)
    checkpoints.close()
    pairs = text_pairs or [None] * len(texts)
    if len(pairs) != len(texts):
        raise ConfigError(f"got {len(texts)} --text but {len(pairs)} --text_pair; give one pair per text")
    if bool(config.task.text_pair_field) != bool(text_pairs):
        need = "needs --text_pair for each --text" if config.task.text_pair_field else "takes no --text_pair"
        raise ConfigError(f"this classifier {need}")
    examples = [Example(text=t, label=labels[0], text_pair=p) for t, p in zip(texts, pairs)]
    path = tokenizer_file(workdir)
    if path is None:
        raise ConfigError(f"--workdir={workdir} has no tokenizer.model or tokenizer.json")
    arrays = encode_examples(examples, open_tokenizer(path), config.data.seq_len)
    probs = compile_predict(layout, mesh)(state["params"], to_global({k: arrays[k] for k in INPUT_KEYS}, mesh))
    return list(labels), np.asarray(probs)
