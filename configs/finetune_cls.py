"""Fine-tune a classifier on the demo's pretrained model (configs/bert_tiny.py) from local files.

    python -m train.finetune --config=configs/finetune_cls.py --init_from=workdirs/demo \
        --workdir=workdirs/cls --config.task.train_path=train.csv --config.task.validation_path=dev.csv

The model section is bert_tiny's, so the demo checkpoint loads; the files are .csv (with a
header) or .jsonl with fields `text` and `label` (set task.text_pair_field for pairs).
"""

import dataclasses

from train.config import Config, DataConfig, OptimConfig, TrainConfig, load_config
from train.config import TaskConfig


def get_config() -> Config:
    # bert_tiny's model, read from its file next to this one, so the demo checkpoint always fits.
    folder, _, _ = __file__.rpartition("finetune_cls.py")
    pretrained = load_config(folder + "bert_tiny.py")
    return Config(
        name="finetune_cls",
        model=dataclasses.replace(pretrained.model, dropout=0.1, attention_dropout=0.1),
        data=DataConfig(seq_len=128),
        # BERT's recipe scaled to a tiny model: a short warmup, then linear decay to zero.
        optim=OptimConfig(learning_rate=5e-4, schedule="linear", warmup_steps=10, weight_decay=0.01),
        train=TrainConfig(batch_size=32, log_every=10, checkpoint_every=1000, keep_checkpoints=2),
        mesh=pretrained.mesh,
        task=TaskConfig(text_field="text", label_field="label", pooling="cls", classifier_dropout=0.1,
                        epochs=5, body_learning_rate_ratio=1.0),
    )
