"""A fine-tuning task's examples as encoded rows, its label map, and step-indexed batches.

The batch of step s is a pure function of (seed, s): each epoch is a fresh seeded
permutation of the training rows (the last partial batch is left out, a different one
each epoch), so a resumed run sees exactly the batches an uninterrupted one would.
"""

from __future__ import annotations

import dataclasses
import pathlib
from collections.abc import Iterator

import numpy as np

from data.tasks import Example, Fields, LabelMap, encode_examples, read_examples, read_tfds_examples
from data.tokenizer import AnyTokenizer
from train.config import Config, ConfigError
from train.config import POOLINGS, TaskConfig

LABELS_FILE = "labels.json"
BATCH_KEYS = ("tokens", "token_types", "segment_ids", "positions", "labels")


def check_task(task: TaskConfig) -> None:
    """Checks the task section before any data or device work; one line on the first problem."""
    files = bool(task.train_path or task.validation_path)
    if files and task.tfds_name:
        raise ConfigError("set either task.train_path/task.validation_path or task.tfds_name, not both")
    if not files and not task.tfds_name:
        raise ConfigError("no task data: set --config.task.train_path=FILE and --config.task.validation_path=FILE "
                          "(.csv or .jsonl), or --config.task.tfds_name=NAME")
    if files and not (task.train_path and task.validation_path):
        missing = "task.validation_path" if task.train_path else "task.train_path"
        raise ConfigError(f"{missing} is not set; fine-tuning needs a training and a validation file")
    if task.pooling not in POOLINGS:
        raise ConfigError(f"config key 'task.pooling' got '{task.pooling}'; accepted: {', '.join(POOLINGS)}")
    if not 0.0 <= task.classifier_dropout < 1.0:
        raise ConfigError(f"config key 'task.classifier_dropout' got {task.classifier_dropout}; "
                          "accepted: a number in [0, 1)")
    if task.epochs < 1:
        raise ConfigError(f"config key 'task.epochs' got {task.epochs}; accepted: an integer >= 1")
    if not 0.0 < task.body_learning_rate_ratio <= 1.0:
        raise ConfigError(f"config key 'task.body_learning_rate_ratio' got {task.body_learning_rate_ratio}; "
                          "accepted: a number in (0, 1]")
    if not task.text_field or not task.label_field:
        raise ConfigError("task.text_field and task.label_field must name fields of the examples")


@dataclasses.dataclass
class TaskRows:
    """Encoded rows of one split: int32 arrays [N, seq_len] and labels [N]."""

    arrays: dict[str, np.ndarray]

    @property
    def num_rows(self) -> int:
        return len(self.arrays["labels"])


@dataclasses.dataclass
class TaskData:
    label_map: LabelMap
    train: TaskRows
    validation: TaskRows


def task_examples(task: TaskConfig) -> tuple[list[Example], list[Example], list[str] | None]:
    """(train, validation, label names if the source defines them) from files or TFDS."""
    fields = Fields(text=task.text_field, label=task.label_field, text_pair=task.text_pair_field)
    try:
        if task.tfds_name:
            train, names = read_tfds_examples(task.tfds_name, task.train_split, fields, task.tfds_data_dir)
            validation, _ = read_tfds_examples(task.tfds_name, task.validation_split, fields, task.tfds_data_dir)
            return train, validation, names
        return read_examples(task.train_path, fields), read_examples(task.validation_path, fields), None
    except ValueError as e:  # data mistakes are the user's: one line, no traceback hint
        raise ConfigError(str(e)) from None


def load_task(config: Config, tokenizer: AnyTokenizer, workdir: pathlib.Path) -> TaskData:
    """Reads and encodes both splits; the label map is made from training labels, or the saved one on resume."""
    train, validation, names = task_examples(config.task)
    saved = workdir / LABELS_FILE
    try:
        label_map = LabelMap.load(saved) if saved.is_file() else LabelMap.from_examples(train, names)
        rows = {}
        for split, examples in (("train", train), ("validation", validation)):
            arrays = encode_examples(examples, tokenizer, config.data.seq_len)
            arrays["labels"] = label_map.ids(examples, f"the {split} split")
            rows[split] = TaskRows(arrays)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if not saved.is_file():
        label_map.save(saved)
    return TaskData(label_map, rows["train"], rows["validation"])


def steps_per_epoch(rows: TaskRows, batch_size: int) -> int:
    """Full batches per pass over the training rows; at least one batch is needed."""
    if rows.num_rows < batch_size:
        raise ConfigError(f"the training split has {rows.num_rows} examples, fewer than "
                          f"train.batch_size={batch_size}; lower --config.train.batch_size")
    return rows.num_rows // batch_size


def train_batch(rows: TaskRows, step: int, batch_size: int, seed: int) -> dict[str, np.ndarray]:
    """The global batch of step `step`: a slice of its epoch's seeded permutation."""
    per_epoch = rows.num_rows // batch_size
    epoch, index = divmod(step, per_epoch)
    order = np.random.default_rng([seed, epoch]).permutation(rows.num_rows)
    picked = order[index * batch_size:(index + 1) * batch_size]
    return {k: v[picked] for k, v in rows.arrays.items()}


def eval_batches(rows: TaskRows, batch_size: int) -> Iterator[dict[str, np.ndarray]]:
    """Every row once, in order; the last batch padded with weight-0 copies of row 0."""
    for start in range(0, rows.num_rows, batch_size):
        picked = np.arange(start, start + batch_size)
        weights = (picked < rows.num_rows).astype(np.float32)
        picked = np.where(picked < rows.num_rows, picked, 0)
        yield {**{k: v[picked] for k, v in rows.arrays.items()}, "weights": weights}
