"""Supervised fine-tuning of the gpt_tiny decoder (configs/gpt_tiny.py) on prompt/response or chat JSONL.

    ./launch.sh sft --config=configs/sft_tiny.py --init_from=workdirs/gpt --workdir=workdirs/sft \
        --config.data.source='files:train.jsonl' [--config.model.lora.rank=8]

The model's sizes come from --init_from (these are gpt_tiny's, so nothing differs); only the
fine-tuning fields apply: dropout, dtype, remat, scan_layers and model.lora (rank 0: every
weight trains; rank > 0: adapters on model.lora.targets train and the base stays frozen).
"""

import dataclasses

from train.config import Config, DataConfig, LoraConfig, OptimConfig, TrainConfig, load_config


def get_config() -> Config:
    folder, _, _ = __file__.rpartition("sft_tiny.py")
    pretrained = load_config(folder + "gpt_tiny.py")
    return Config(
        name="sft_tiny",
        model=dataclasses.replace(pretrained.model, lora=LoraConfig(rank=0, alpha=16.0, dropout=0.0)),
        # Records of `prompt` and `response` (or `messages`), rendered by the workdir's chat template
        # (--init_from's, else meshlm's default); the loss covers the responses only.
        data=DataConfig(format="sft", source="files:sft/train.jsonl", seq_len=128),
        # A fine-tuning rate: a tenth of pretraining's peak, short warmup, linear decay to zero.
        # LoRA adapters take a higher one (--config.optim.learning_rate=2e-3 with rank 8).
        optim=OptimConfig(learning_rate=3e-4, schedule="linear", warmup_steps=20, weight_decay=0.0),
        train=TrainConfig(steps=300, batch_size=32, log_every=50, eval_every=100, eval_batches=10,
                          checkpoint_every=100, keep_checkpoints=2),
        mesh=pretrained.mesh,
    )
