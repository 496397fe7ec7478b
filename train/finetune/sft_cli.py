"""Supervised fine-tuning of a decoder, full or LoRA (the library is train/finetune/supervised.py).

    python -m train.finetune.sft_cli --config=configs/sft_tiny.py --init_from=PRETRAINED_WORKDIR \\
        --workdir=OUT --config.data.source='files:train.jsonl' [--config.model.lora.rank=8]

--init_from is a decoder's workdir: a pretraining run, or one `./launch.sh import_hf` made
from a Transformers folder. Records are JSONL lines (or TFDS examples) with `prompt` and
`response`, or `messages` [{"role", "content"}, ...]; rerunning the command resumes.
"""

from __future__ import annotations

from train import program
from train.config import ConfigError

_CONFIG = program.CONFIG
_INIT_FROM = program.INIT_FROM
_WORKDIR = program.WORKDIR


def main(argv: list[str]) -> None:
    if not _CONFIG.value:
        raise ConfigError("--config is required, e.g. --config=configs/sft_tiny.py")
    config = program.config_from_flags(_CONFIG.value)
    workdir = program.writable_workdir(_WORKDIR.value)
    from train.finetune.supervised import fine_tune  # JAX starts here, after every check of the user's input

    fine_tune(config, workdir, _INIT_FROM.value)


if __name__ == "__main__":
    program.run(main)
