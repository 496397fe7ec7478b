"""A trained workdir opened for inference: its config, tokenizer and parameters on a mesh."""

from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import Any

from jax.sharding import Mesh

from data.pipeline import PreparedData
from train.checkpoints.manager import Checkpoints
from train.config import Config, config_from_json
from train.inputs import check_same_data, prepare_data
from train.mesh import make_mesh
from train.optimizer import make_optimizer
from train.checkpoints.params import resolve_step
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
    step = resolve_step(path, step)
    workdir = pathlib.Path(path)
    checkpoints = Checkpoints(workdir, use_async=False)
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
