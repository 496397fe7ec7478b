"""The parameters of one saved step, read one array at a time into host memory.

Orbax stores every array whole (tensorstore chunks), whatever mesh wrote it; a partial
restore of a single leaf with `restore_type=np.ndarray` reads just that leaf into host
memory without placing it on any device. Export streams through the model this way, so
its host memory stays near the largest stored array, not the model.
"""

from __future__ import annotations

import json
import logging
import pathlib
import sys
from typing import Any, Callable, TypeVar

import jax
import numpy as np
import orbax.checkpoint as ocp

from data.tokenizer import AnyTokenizer, open_tokenizer, tokenizer_file
from train.checkpoints.manager import Checkpoints, reading
from train.config import Config, ConfigError, config_from_json

ParamSpec = tuple[tuple[int, ...], np.dtype]
T = TypeVar("T")


def saved_steps(workdir: str | pathlib.Path) -> list[int]:
    """The committed steps of a workdir, with a one-line error when there are none."""
    if not workdir:
        raise ConfigError("--workdir is required: the workdir of a training run")
    if not (pathlib.Path(workdir) / "checkpoints").is_dir():
        raise ConfigError(f"--workdir={workdir} has no checkpoints/; pass the workdir of a training run")
    checkpoints = Checkpoints(workdir, use_async=False)
    steps = sorted(checkpoints.all_steps())
    checkpoints.close()
    if not steps:
        raise ConfigError(f"--workdir={workdir} has no checkpoints yet; train first or wait for the first save")
    return steps


def resolve_step(workdir: str | pathlib.Path, step: int | None) -> int:
    """The requested step (the latest by default), with a one-line error when it is missing."""
    steps = saved_steps(workdir)
    if step is None:
        return steps[-1]
    if step not in steps:
        raise ConfigError(f"--step={step} is not in {workdir}; saved steps: {steps}")
    return step


def read_checkpoint(workdir: str | pathlib.Path, step: int | None, attempt: Callable[[int, dict], T],
                    warn: Callable[[str], None] | None = None) -> tuple[T, int]:
    """(attempt(step, meta), step) for checkpoint --step, or by default for the newest one whose files read.

    The readers' side of the trust rule in train/checkpoints/manager.py: a damaged newer step
    is named in one line (on stderr) and the previous one is used, left where it is; a
    damaged --step is a one-line error. `attempt` reads the step (through Checkpoints or
    CheckpointParams, whose read failures are DamagedCheckpoint); its other errors pass through.
    """
    resolve_step(workdir, step)  # the one-line errors for a missing workdir, checkpoint or --step
    warn = warn or (lambda line: print(line, file=sys.stderr))
    checkpoints = Checkpoints(workdir, use_async=False)
    try:
        if step is not None:
            return attempt(step, checkpoints.restore_meta(step)), step
        found = checkpoints.newest_sound(attempt, warn, set_aside=False)
    finally:
        checkpoints.close()
    if found is None:
        raise ConfigError(f"every checkpoint in {checkpoints.directory} is damaged (see the warnings above); "
                          "nothing to read")
    (value, _), step = found
    return value, step


def checked_tokenizer(workdir: pathlib.Path, meta: dict, step: int) -> AnyTokenizer | None:
    """The workdir's tokenizer (either kind), or None; refused if it is not the one `step` trained with."""
    path = tokenizer_file(workdir)
    if path is None:
        return None
    tokenizer = open_tokenizer(path)
    saved = meta.get("tokenizer_sha256")
    if saved and tokenizer.sha256() != saved:
        raise ConfigError(f"{path} is not the tokenizer checkpoint step {step} was trained with "
                          f"(its sha256 differs); restore the original {path.name}")
    return tokenizer


class CheckpointParams:
    """Config, metadata and per-array reads of the params of workdir's checkpoint `step`.

    `step=None` opens the newest step whose metadata reads (see read_checkpoint); a read of
    damaged array files raises DamagedCheckpoint.
    """

    def __init__(self, workdir: str | pathlib.Path, step: int | None = None):
        self.workdir = pathlib.Path(workdir)
        logging.getLogger("absl").setLevel(logging.ERROR)  # orbax warns about a metadata file it never writes here
        self._checkpointer = ocp.Checkpointer(ocp.PyTreeCheckpointHandler())
        (self.meta, self.specs), self.step = read_checkpoint(workdir, step, self._open)
        self.config: Config = config_from_json(json.dumps(self.meta["config"]))

    def _open(self, step: int, meta: dict) -> tuple[dict[str, Any], dict[str, ParamSpec]]:
        """The step's metadata and the shape and dtype of every parameter."""
        self._state_dir = self.workdir.absolute() / "checkpoints" / str(step) / "state"
        with reading(self._state_dir.parent.parent, step, "state metadata"):
            tree = self._checkpointer.metadata(self._state_dir).item_metadata.tree["params"]
        specs = {_dotted(path): (tuple(leaf.shape), np.dtype(leaf.dtype))
                 for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}
        return meta, specs

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
        with reading(self._state_dir.parent.parent, self.step, "state"):
            restored = self._checkpointer.restore(
                self._state_dir, args=ocp.args.PyTreeRestore(item=item, restore_args=args, partial_restore=True))
        value = restored["params"]
        for part in name.split("."):
            value = value[part]
        return np.asarray(value)

    def tokenizer(self) -> AnyTokenizer | None:
        """The workdir's tokenizer when present; refused if it is not the one the step trained with."""
        return checked_tokenizer(self.workdir, self.meta, self.step)


def _dotted(path: tuple) -> str:
    return ".".join(str(getattr(k, "key", getattr(k, "name", k))) for k in path)


def restore_params(workdir: str | pathlib.Path, step: int, abstract_params: Any) -> Any:
    """Only the params of a saved step (no optimizer state), placed with the target's shardings."""
    logging.getLogger("absl").setLevel(logging.ERROR)
    directory = pathlib.Path(workdir).absolute() / "checkpoints"
    item = {"params": abstract_params}
    restore_args = ocp.checkpoint_utils.construct_restore_args(item)
    checkpointer = ocp.Checkpointer(ocp.PyTreeCheckpointHandler())
    with reading(directory, step, "state"):
        restored = checkpointer.restore(
            directory / str(step) / "state",
            args=ocp.args.PyTreeRestore(item=item, restore_args=restore_args, partial_restore=True))
    return restored["params"]
