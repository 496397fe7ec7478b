"""Optimizer-state bytes and trainable parameters of LoRA against full fine-tuning, for a config's model.

Nothing is allocated: the train state's layout (train/state.py) gives every leaf's shape,
so a 1B model is measured on a laptop. Full fine-tuning keeps AdamW's two float32 moments
for every parameter; LoRA keeps them for the adapters only (train/trainable.py).

    ./launch.sh run benchmarks.lora_memory [--config=configs/llama_1b.py] [--ranks=8,16] [--targets=q,v ...]
"""

from __future__ import annotations

import dataclasses
import math

import jax
from absl import app, flags

from train.config import LoraConfig, load_config
from train.mesh import make_mesh
from train.optimizer import make_optimizer
from train.state import state_layout

_CONFIG = flags.DEFINE_string("config", "configs/llama_1b.py", "The model to measure.")
_RANKS = flags.DEFINE_list("ranks", ["8", "16"], "LoRA ranks to compare with full fine-tuning.")
_TARGETS = flags.DEFINE_multi_string("targets", ["q,k,v,o", "q,k,v,o,gate,up,down"],
                                     "A set of LoRA targets (names joined by commas); repeat the flag for several.")


def layout_figures(config) -> tuple[int, int, int]:
    """(parameters, trainable parameters, optimizer-state bytes) of a config's train state."""
    tx, _ = make_optimizer(config.optim, config.train.steps)
    layout = state_layout(config.model, tx, make_mesh((1, 1, 1), jax.devices()[:1]))
    opt_bytes = sum(math.prod(x.shape) * x.dtype.itemsize for x in jax.tree.leaves(layout.abstract["opt_state"]))
    return layout.param_count, layout.trainable_count, opt_bytes


def main(argv: list[str]) -> None:
    del argv
    config = load_config(_CONFIG.value)
    full = dataclasses.replace(config, model=dataclasses.replace(config.model, lora=LoraConfig()))
    params, _, full_bytes = layout_figures(full)
    print(f"{config.name}: {params / 1e6:.1f}M parameters; full fine-tuning: optimizer state "
          f"{full_bytes / 2**30:.2f} GiB (AdamW's two float32 moments of every parameter)")
    for rank in map(int, _RANKS.value):
        for targets in _TARGETS.value:
            lora = LoraConfig(rank=rank, alpha=2.0 * rank, targets=tuple(targets.split(",")))
            tuned = dataclasses.replace(config, model=dataclasses.replace(config.model, lora=lora))
            total, trainable, opt_bytes = layout_figures(tuned)
            print(f"  LoRA rank {rank:>3} on {targets:<22} trainable {trainable / 1e6:6.2f}M "
                  f"({100 * trainable / total:.2f}% of {total / 1e6:.1f}M); optimizer state "
                  f"{opt_bytes / 2**20:8.1f} MiB = {opt_bytes / full_bytes:.4f} x full fine-tuning's")


if __name__ == "__main__":
    app.run(main)
