"""Orbax checkpoints of the train state, restored into targets that carry the current shardings."""

from __future__ import annotations

import pathlib
from typing import Any

import orbax.checkpoint as ocp

from train.state import TrainState


class Checkpoints:
    """Saves `{state, meta}` under workdir/checkpoints/<step>; keeps the newest `keep`."""

    def __init__(self, workdir: str | pathlib.Path, *, keep: int = 3, use_async: bool = True):
        self.directory = pathlib.Path(workdir).absolute() / "checkpoints"
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep, enable_async_checkpointing=use_async, create=True)
        self._manager = ocp.CheckpointManager(self.directory, options=options)

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self._manager.all_steps())

    def save(self, step: int, state: TrainState, meta: dict[str, Any]) -> None:
        """Starts an asynchronous save; training continues while it is written.

        Orbax copies every array to host memory before this returns, so the next train
        step may donate (overwrite) the state's device buffers safely.
        """
        self._manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)), force=True)

    def restore(self, step: int, abstract_state: TrainState) -> tuple[TrainState, dict[str, Any]]:
        """Loads step `step` into the shapes and shardings of `abstract_state`."""
        restored = self._manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()))
        return restored["state"], restored["meta"]

    def restore_meta(self, step: int) -> dict[str, Any]:
        """Only the JSON metadata of a step (config, tokenizer), without touching devices."""
        return self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]

    def wait(self) -> None:
        """Blocks until every pending save is committed."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.close()

