"""Fine-tune a classifier from a pretrained MLM workdir (the loop is train/finetune/classifier_loop.py).

    python -m train.finetune --config=configs/finetune_cls.py --init_from=PRETRAINED_WORKDIR \\
        --workdir=OUT --config.task.train_path=train.csv --config.task.validation_path=dev.csv
"""

from __future__ import annotations

from train import program
from train.config import ConfigError

_CONFIG = program.CONFIG
_INIT_FROM = program.INIT_FROM
_WORKDIR = program.WORKDIR


def main(argv: list[str]) -> None:
    if not _CONFIG.value:
        raise ConfigError("--config is required, e.g. --config=configs/finetune_cls.py")
    config = program.config_from_flags(_CONFIG.value)
    from train.finetune.task_data import check_task

    check_task(config.task)
    workdir = program.writable_workdir(_WORKDIR.value)
    from train.finetune.classifier_loop import finetune  # JAX starts here, after every check of the user's input

    finetune(config, workdir, _INIT_FROM.value)


if __name__ == "__main__":
    program.run(main)
