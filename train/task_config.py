"""The `task` section of a config: a fine-tuning task's data and its classification head.

Pre-training ignores it. Fine-tuning reads examples from local CSV/JSONL files
(`train_path`, `validation_path`) or from a prepared TFDS dataset (`tfds_name`), and
trains for `epochs` passes over the training split (train.steps is then derived).
"""

from __future__ import annotations

import dataclasses

POOLINGS = ("cls", "mean")


@dataclasses.dataclass
class TaskConfig:
    """Where a fine-tuning task's labelled examples come from and how the head is trained."""

    train_path: str = ""  # .csv (with a header) or .jsonl; "" when tfds_name is set
    validation_path: str = ""
    tfds_name: str = ""  # e.g. glue/sst2, read with tfds.data_source (prepared, no download)
    tfds_data_dir: str = ""
    train_split: str = "train"
    validation_split: str = "validation"
    text_field: str = "text"
    text_pair_field: str = ""  # set for sentence pairs: [CLS] a [SEP] b [SEP]
    label_field: str = "label"
    pooling: str = "cls"  # cls: BERT's pooler on [CLS] | mean: over non-padding tokens
    classifier_dropout: float = 0.1
    epochs: int = 3
    body_learning_rate_ratio: float = 1.0  # encoder's rate as a fraction of optim.learning_rate
