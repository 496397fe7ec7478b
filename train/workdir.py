"""A trained workdir opened for inference: its config, tokenizer and parameters on a mesh."""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Any

from jax.sharding import Mesh

from data.store import PreparedData
from train.checkpoint import Checkpoints
from train.config import Config, ConfigError, config_from_json
from train.loop import prepare_data
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
    """Loads the config saved in a workdir and the parameters of a checkpoint (latest by default)."""
    workdir = pathlib.Path(path)
    config_file = workdir / "config.json"
    if not config_file.is_file():
        raise ConfigError(f"--workdir={path} has no config.json; pass the workdir of a training run")
    config = config_from_json(config_file.read_text())
    checkpoints = Checkpoints(workdir, use_async=False)
    steps = checkpoints.all_steps()
    if not steps:
        raise ConfigError(f"--workdir={path} has no checkpoints yet; train first or wait for the first save")
    if step is None:
        step = max(steps)
    elif step not in steps:
        raise ConfigError(f"--step={step} is not in {path}; saved steps: {sorted(steps)}")
    mesh = make_mesh(mesh_shape)
    tx, _ = make_optimizer(config.optim, config.train.steps)
    layout = state_layout(config.model, tx, mesh)
    state, _ = checkpoints.restore(step, layout.abstract)
    checkpoints.close()
    return TrainedModel(config, prepare_data(config, workdir), mesh, layout, state["params"], step)
