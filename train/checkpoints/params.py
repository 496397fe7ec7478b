"""The parameters of one saved step, read one array at a time into host memory.

Orbax stores every array whole (tensorstore chunks), whatever mesh wrote it; a partial
restore of a single leaf with `restore_type=np.ndarray` reads just that leaf into host
memory without placing it on any device. Export streams through the model this way, so
its host memory stays near the largest stored array, not the model.
"""

from __future__ import annotations

import hashlib
import json
import logging
import pathlib
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from train.checkpoints.manager import Checkpoints
from train.config import Config, ConfigError, config_from_json

ParamSpec = tuple[tuple[int, ...], np.dtype]


def resolve_step(workdir: str | pathlib.Path, step: int | None) -> int:
    """The requested step (the latest by default), with a one-line error when it is missing."""
    if not workdir:
        raise ConfigError("--workdir is required: the workdir of a training run")
    if not (pathlib.Path(workdir) / "checkpoints").is_dir():
        raise ConfigError(f"--workdir={workdir} has no checkpoints/; pass the workdir of a training run")
    checkpoints = Checkpoints(workdir, use_async=False)
    steps = sorted(checkpoints.all_steps())
    checkpoints.close()
    if not steps:
        raise ConfigError(f"--workdir={workdir} has no checkpoints yet; train first or wait for the first save")
    if step is None:
        return steps[-1]
    if step not in steps:
        raise ConfigError(f"--step={step} is not in {workdir}; saved steps: {steps}")
    return step


class CheckpointParams:
    """Config, metadata and per-array reads of the params of workdir's checkpoint `step`."""

    def __init__(self, workdir: str | pathlib.Path, step: int | None = None):
        self.workdir = pathlib.Path(workdir)
        self.step = resolve_step(workdir, step)
        checkpoints = Checkpoints(workdir, use_async=False)
        self.meta: dict[str, Any] = checkpoints.restore_meta(self.step)
        self._state_dir = checkpoints.directory / str(self.step) / "state"
        checkpoints.close()
        self.config: Config = config_from_json(json.dumps(self.meta["config"]))
        logging.getLogger("absl").setLevel(logging.ERROR)  # orbax warns about a metadata file it never writes here
        self._checkpointer = ocp.Checkpointer(ocp.PyTreeCheckpointHandler())
        tree = self._checkpointer.metadata(self._state_dir).item_metadata.tree["params"]
        self.specs: dict[str, ParamSpec] = {
            _dotted(path): (tuple(leaf.shape), np.dtype(leaf.dtype))
            for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}

    def read(self, name: str) -> np.ndarray:
        """One parameter (dotted path, e.g. `layers.mlp.up.kernel`) as a numpy array."""
        if name not in self.specs:
            raise KeyError(f"checkpoint step {self.step} has no parameter {name}")
        item: dict[str, Any] = {}
        args: dict[str, Any] = {}
        node_item, node_args = item, args
        for part in ("params", *name.split(".")[:-1]):
            node_item = node_item.setdefault(part, {})
            node_args = node_args.setdefault(part, {})
        last = name.split(".")[-1]
        node_item[last] = 0
        node_args[last] = ocp.RestoreArgs(restore_type=np.ndarray)
        restored = self._checkpointer.restore(
            self._state_dir, args=ocp.args.PyTreeRestore(item=item, restore_args=args, partial_restore=True))
        value = restored["params"]
        for part in name.split("."):
            value = value[part]
        return np.asarray(value)

    def tokenizer_path(self) -> pathlib.Path | None:
        """workdir/tokenizer.model when present; refused if it is not the one the step trained with."""
        path = self.workdir / "tokenizer.model"
        if not path.is_file():
            return None
        saved = self.meta.get("tokenizer_sha256")
        if saved and hashlib.sha256(path.read_bytes()).hexdigest() != saved:
            raise ConfigError(f"{path} is not the tokenizer checkpoint step {self.step} was trained with "
                              "(its sha256 differs); restore the original tokenizer.model")
        return path


def _dotted(path: tuple) -> str:
    return ".".join(str(getattr(k, "key", getattr(k, "name", k))) for k in path)


def restore_params(workdir: str | pathlib.Path, step: int, abstract_params: Any) -> Any:
    """Only the params of a saved step (no optimizer state), placed with the target's shardings."""
    logging.getLogger("absl").setLevel(logging.ERROR)
    state_dir = pathlib.Path(workdir).absolute() / "checkpoints" / str(step) / "state"
    item = {"params": abstract_params}
    restore_args = ocp.checkpoint_utils.construct_restore_args(item)
    checkpointer = ocp.Checkpointer(ocp.PyTreeCheckpointHandler())
    restored = checkpointer.restore(
        state_dir, args=ocp.args.PyTreeRestore(item=item, restore_args=restore_args, partial_restore=True))
    return restored["params"]
