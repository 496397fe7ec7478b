"""A trained workdir opened for inference: its config, tokenizer and parameters on a mesh.

Decoding and fill-mask need only the tokenizer and the parameters; the packed data (which
an imported model would first have to tokenize a corpus for) is prepared on first use of
`TrainedModel.data`, e.g. for fill-mask's held-out sentences.
"""

from __future__ import annotations

import functools
import json
import pathlib
from typing import Any, Callable

from jax.sharding import Mesh

from data.pipeline import PreparedData
from data.tokenizer import AnyTokenizer
from train.checkpoints.params import checked_tokenizer, read_checkpoint, restore_params
from train.config import Config, ConfigError, config_from_json
from train.inputs import check_same_data, prepare_data
from train.mesh import make_mesh
from train.optimizer import make_optimizer
from train.state import StateLayout, state_layout


class TrainedModel:
    """One checkpoint's config, tokenizer and parameters (placed on `mesh`)."""

    def __init__(self, workdir: pathlib.Path, step: int, meta: dict, config: Config, tokenizer: AnyTokenizer,
                 mesh: Mesh, layout: StateLayout, params: Any):
        self.workdir, self.step, self.meta, self.config = workdir, step, meta, config
        self.tokenizer, self.mesh, self.layout, self.params = tokenizer, mesh, layout, params

    @functools.cached_property
    def data(self) -> PreparedData:
        """The workdir's packed data (prepared now if needed), checked to be the checkpoint's."""
        data = prepare_data(self.config, self.workdir)
        check_same_data(self.meta, data, f"checkpoint step {self.step}")
        return data


def open_workdir(path: str | pathlib.Path, step: int | None = None, mesh_shape: tuple[int, ...] = (1, 1, 1),
                 check: Callable[[Config], None] | None = None) -> TrainedModel:
    """The parameters of a checkpoint (the newest sound one by default) with the config it was saved with.

    `check(config)` may refuse the model (ConfigError) before any weight is read.
    """
    workdir = pathlib.Path(path)
    mesh = make_mesh(mesh_shape)

    def restore(step: int, meta: dict) -> tuple[dict, Config, StateLayout, Any]:
        config = config_from_json(json.dumps(meta["config"]))
        if check is not None:
            check(config)
        tx, _ = make_optimizer(config.optim, config.train.steps)
        layout = state_layout(config.model, tx, mesh)
        return meta, config, layout, restore_params(workdir, step, layout.abstract["params"])

    (meta, config, layout, params), step = read_checkpoint(workdir, step, restore)
    tokenizer = checked_tokenizer(workdir, meta, step)
    if tokenizer is None:
        raise ConfigError(f"--workdir={workdir} has no tokenizer.model or tokenizer.json; put the tokenizer its "
                          "checkpoints were trained with there")
    return TrainedModel(workdir, step, meta, config, tokenizer, mesh, layout, params)

