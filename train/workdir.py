"""A trained workdir opened for inference: its config, tokenizer and parameters on a mesh."""

from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import Any

from jax.sharding import Mesh

from data.store import PreparedData
from train.checkpoint import Checkpoints
from train.config import Config, ConfigError, config_from_json
from train.inputs import check_same_data, prepare_data
from train.mesh import make_mesh
from train.optimizer import make_optimizer
from train.state import StateLayout, state_layout


@dataclasses.dataclass
class TrainedModel:
    config: Config
    data: PreparedData
    mesh: Mesh
    layout: StateLayout
    params: Any
    step: int


def open_workdir(path: str | pathlib.Path, step: int | None = None,
                 mesh_shape: tuple[int, ...] = (1, 1, 1)) -> TrainedModel:
    """The parameters of a checkpoint (latest by default) with the config it was saved with."""
    if not path:
        raise ConfigError("--workdir is required: the workdir of a training run")
    workdir = pathlib.Path(path)
    if not (workdir / "checkpoints").is_dir():
        raise ConfigError(f"--workdir={path} has no checkpoints/; pass the workdir of a training run")
    checkpoints = Checkpoints(workdir, use_async=False)
    steps = checkpoints.all_steps()
    if not steps:
        raise ConfigError(f"--workdir={path} has no checkpoints yet; train first or wait for the first save")
    if step is None:
        step = max(steps)
    elif step not in steps:
        raise ConfigError(f"--step={step} is not in {path}; saved steps: {sorted(steps)}")
    meta = checkpoints.restore_meta(step)
    config = config_from_json(json.dumps(meta["config"]))
    data = prepare_data(config, workdir)
    check_same_data(meta, data, f"checkpoint step {step}")
    mesh = make_mesh(mesh_shape)
    tx, _ = make_optimizer(config.optim, config.train.steps)
    layout = state_layout(config.model, tx, mesh)
    state, _ = checkpoints.restore(step, layout.abstract)
    checkpoints.close()
    return TrainedModel(config, data, mesh, layout, state["params"], step)
