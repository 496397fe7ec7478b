"""Train-step speed with the MLM prediction budget against the dense vocabulary projection.

The budget projects only the chosen (masked) positions onto the vocabulary; the baseline
projects every position, as a plain `model(...)` would. Both run side by side in this
process on the same model, batch and masks, alternating after warm-up.

    ./launch.sh run benchmarks.mlm_head_budget [--config=configs/bert_tiny.py] [--repeats=5]
"""

from __future__ import annotations

import dataclasses
import time

import jax
import numpy as np
from absl import app, flags

from train.config import load_config
from train.masking import MaskingSpec, prediction_budget
from train.mesh import make_mesh, to_global
from train.optimizer import make_optimizer
from train.state import init_state, state_layout
from train.steps import compile_train_step

_CONFIG = flags.DEFINE_string("config", "configs/bert_tiny.py", "Model and batch shape to time.")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed rounds; each round runs both steps.")
_STEPS = flags.DEFINE_integer("steps", 10, "Steps per timed round.")


def _timed(step, state, batch, steps: int):
    started = time.perf_counter()
    for _ in range(steps):
        state, metrics = step(state, batch)
    jax.block_until_ready(metrics)
    return state, (time.perf_counter() - started) / steps


def main(argv: list[str]) -> None:
    del argv
    config = load_config(_CONFIG.value)
    m, d, t = config.model, config.data, config.train
    mesh = make_mesh((1, 1, 1), jax.devices()[:1])
    tx, schedule = make_optimizer(config.optim, t.steps)
    layout = state_layout(m, tx, mesh)
    dense = MaskingSpec(mask_id=4, vocab_size=m.vocab_size, special_ids=(0, 1, 2, 3, 4),
                        probability=d.mlm_probability)
    budget = dataclasses.replace(dense, max_predictions=prediction_budget(d.seq_len, d.mlm_probability))
    rng = np.random.default_rng(0)
    tokens = rng.integers(5, m.vocab_size, (t.batch_size, d.seq_len)).astype(np.int32)
    tokens[:, 0] = 2
    batch = to_global({"tokens": tokens, "segment_ids": np.ones_like(tokens),
                       "positions": np.broadcast_to(np.arange(d.seq_len, dtype=np.int32), tokens.shape).copy()},
                      mesh)
    steps = {name: compile_train_step(layout, mesh, tx=tx, schedule=schedule, spec=spec, seed=0)
             for name, spec in (("dense", dense), ("budget", budget))}
    states = {name: init_state(m, tx, layout, mesh, seed=0) for name in steps}
    for name in steps:  # warm-up: compile and one untimed round
        states[name], _ = _timed(steps[name], states[name], batch, 2)
    times = {name: [] for name in steps}
    for _ in range(_REPEATS.value):
        for name in steps:
            states[name], seconds = _timed(steps[name], states[name], batch, _STEPS.value)
            times[name].append(seconds)
    tokens_per_step = t.batch_size * d.seq_len
    print(f"{config.name}: batch {t.batch_size} x {d.seq_len}, vocab {m.vocab_size}, "
          f"budget {budget.max_predictions} predictions per row")
    for name, values in times.items():
        best = min(values)
        print(f"  {name:6s} step {best * 1e3:8.1f} ms  {tokens_per_step / best:9.0f} tokens/s  (best of {len(values)})")
    print(f"  speed-up of the budget over dense: {min(times['dense']) / min(times['budget']):.2f}x")


if __name__ == "__main__":
    app.run(main)
