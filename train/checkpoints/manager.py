"""Orbax checkpoints of the train state, restored into targets that carry the current shardings.

Trust rules: a step is used only once orbax has committed it (renamed from its
`*.orbax-checkpoint-tmp-*` folder and stamped `_CHECKPOINT_METADATA` with a commit time);
a damaged latest step is reported in one line, moved to `workdir/damaged_checkpoints/`
and the previous one is used; old steps are deleted only after a newer step has committed.
Readers (evaluate, export, decode, fill-mask) follow the same rule through `newest_sound`,
but leave a damaged step where it is: a reader never moves or deletes anything.

Failed saves (a full disk, a lost mount): the writer polls the background save every step,
and a failure ends the run with one line (CheckpointSaveError: the step, the directory, the
reason, the free space against the checkpoint's size, the last good step) after removing
the save's partial folder. Before each save a log line warns when the free space looks too
small for it. A writer first `claim()`s the workdir (train/checkpoints/lease.py), which
removes the partial saves of earlier runs that died.

Test hooks (tests only), both in the background save just before its commit (the rename):
`MESHLM_TEST_HOLD_COMMIT=STEP:SECONDS` sleeps, so a test can kill a run in the middle of an
asynchronous save; `MESHLM_TEST_DISK_FULL=STEP` raises OSError(ENOSPC) as a full disk
would, for machines where a test cannot mount a small filesystem.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import pathlib
import sys
import time
from typing import Any, Callable, Iterator, TypeVar

import jax
import orbax.checkpoint as ocp

from train.checkpoints.lease import STALE_SECONDS, TMP_MARKER, Lease, remove_partial_saves
from train.checkpoints.storage import free_bytes, megabytes, tree_bytes, write_failure
from train.config import ConfigError
from train.distributed import process_barrier
from train.state import TrainState

T = TypeVar("T")

DAMAGED_DIR = "damaged_checkpoints"
COMMIT_FILE = "_CHECKPOINT_METADATA"  # orbax writes it last; it holds the commit time
_LOWER_IS_BETTER = ("loss", "perplexity")
_SPACE_MARGIN = 1.05  # warn unless the free space exceeds the checkpoint's size by this


class CheckpointSaveError(ConfigError):
    """A checkpoint could not be written; the message says what, where, why, and the last good step."""


class DamagedCheckpoint(ConfigError):
    """A saved step whose files cannot be read (truncated, half-copied, no commit marker)."""

    def __init__(self, directory: pathlib.Path, step: int, problem: str):
        super().__init__(f"checkpoint step {step} in {directory} is damaged ({problem})")
        self.directory, self.step, self.problem = directory, step, problem


@contextlib.contextmanager
def reading(directory: pathlib.Path, step: int, what: str) -> Iterator[None]:
    """Turns any failure of orbax reading step's files into DamagedCheckpoint (user errors pass)."""
    _quiet_orbax_noise()
    try:
        yield
    except ConfigError:
        raise
    except Exception as e:  # orbax/tensorstore raise many types for a bad file
        raise DamagedCheckpoint(directory, step, f"unreadable {what}: {_first_line(e)}") from e


def _quiet_orbax_noise() -> None:
    """Silences what orbax and tensorstore print about a damaged step besides meshlm's one line.

    Reads still in flight when orbax gave up on a step deliver their results after orbax
    closed the event loop they were for, and Python would print a traceback for each ("Event
    loop is closed"); orbax logs a cut commit marker as an error, with the file's content.
    Neither says anything a user can act on.
    """
    previous = sys.unraisablehook
    if getattr(previous, "meshlm_quiet", False):
        return

    def hook(unraisable) -> None:
        if not (isinstance(unraisable.exc_value, RuntimeError) and "Event loop is closed" in str(unraisable.exc_value)):
            previous(unraisable)

    hook.meshlm_quiet = True
    sys.unraisablehook = hook
    logging.getLogger("absl").addFilter(lambda record: not str(record.msg).startswith("Failed to json parse Metadata"))


class Checkpoints:
    """Saves `{state, meta}` under workdir/checkpoints/<step>; keeps the last `keep` (and the best)."""

    def __init__(self, workdir: str | pathlib.Path, *, keep: int = 3, use_async: bool = True,
                 best_metric: str = "", best_mode: str = "auto"):
        """`best_metric`: also keep the checkpoint with the best `meta["metrics"][best_metric]`."""
        _quiet_orbax_noise()
        self.workdir = pathlib.Path(workdir).absolute()
        self.directory = self.workdir / "checkpoints"
        self._keep = keep
        self._best_metric = best_metric
        if best_mode == "auto":
            best_mode = "min" if best_metric in _LOWER_IS_BETTER else "max"
        self._best_mode = best_mode
        self._metrics: dict[int, dict[str, float]] = {}
        self._saving: int | None = None  # the step of the latest save this object started
        self._pending: int | None = None  # a save started whose outcome is not known yet
        self._lease: Lease | None = None
        self._sizes: dict[int, int] = {}  # bytes on disk of committed steps, measured once each
        self._last_state_bytes = 0
        # Retention is ours (max_to_keep=None): orbax would delete old steps even when the
        # new save failed; we delete only steps older than one known to be committed.
        options = ocp.CheckpointManagerOptions(
            max_to_keep=None, enable_async_checkpointing=use_async, create=True,
            async_options=ocp.AsyncOptions(post_finalization_callback=self._test_hooks) if use_async else None)
        self._manager = ocp.CheckpointManager(self.directory, options=options)

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self._manager.all_steps())

    def claim(self, log: Callable[[str], None]) -> None:
        """Takes the workdir's writer lease (process 0) and removes partial saves of dead runs.

        The other processes wait for it (it may wait out an old lease) at a barrier of the
        coordination service: a device collective would give up after 30 s on CPU.
        """
        if jax.process_index() == 0:
            self._lease = Lease(self.workdir, jax.process_count())
            self._lease.acquire(log)
            removed = remove_partial_saves(self.directory)
            if removed:
                log(f"removed {len(removed)} partial save(s) left in {self.directory} by an earlier run that "
                    f"stopped mid-save: {', '.join(removed)}")
        process_barrier("claimed-workdir", timeout_seconds=2 * STALE_SECONDS + 60)

    def save(self, step: int, state: TrainState, meta: dict[str, Any], log: Callable[[str], None] = print) -> None:
        """Starts an asynchronous save; training continues while it is written.

        Orbax copies every array to host memory before this returns, so the next train
        step may donate (overwrite) the state's device buffers safely. The previous save
        must have committed first (orbax waits for it anyway), and only then are steps
        beyond the retention policy deleted, so the newest committed step always survives.
        """
        self._finish()
        self._prune()
        if meta.get("metrics"):
            self._metrics[step] = meta["metrics"]
        short = self._space_shortfall(state)
        if short and jax.process_index() == 0:
            log(f"warning: checkpoint step {step} needs about {megabytes(short[0])} but only {megabytes(short[1])} "
                f"are free in {self.directory}: the save will likely fail; free some space (or lower "
                "train.keep_checkpoints)")
        self._saving = self._pending = step
        try:
            self._manager.save(step, args=ocp.args.Composite(
                state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)), force=True)
        except Exception as e:  # the synchronous part writes too (folders, metadata)
            self._failed(step, e)

    def poll(self) -> None:
        """Raises CheckpointSaveError once a background save has failed; a cheap check, call every step."""
        if self._pending is not None and not self._manager.is_saving_in_progress():
            self._finish()

    def restore(self, step: int, abstract_state: TrainState) -> tuple[TrainState, dict[str, Any]]:
        """Loads step `step` into the shapes and shardings of `abstract_state` (DamagedCheckpoint if it cannot)."""
        with reading(self.directory, step, "state"):
            restored = self._manager.restore(step, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()))
        return restored["state"], restored["meta"]

    def restore_meta(self, step: int) -> dict[str, Any]:
        """Only the JSON metadata of a step (config, tokenizer), without touching devices."""
        problem = commit_problem(self.directory / str(step))
        if problem is not None:
            raise DamagedCheckpoint(self.directory, step, problem)
        with reading(self.directory, step, "metadata"):
            return self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]

    def restore_latest(self, abstract_state: TrainState, check: Callable[[int, dict], None],
                       warn: Callable[[str], None]) -> tuple[TrainState, dict[str, Any], int] | None:
        """The newest step that restores cleanly; damaged newer steps are reported and set aside.

        `check(step, meta)` may raise ConfigError (another model, another tokenizer): that is
        the user's mistake, not damage, and is passed on untouched.
        """
        def attempt(step: int, meta: dict) -> TrainState:
            check(step, meta)
            return self.restore(step, abstract_state)[0]

        found = self.newest_sound(attempt, warn, set_aside=True)
        if found is None:
            return None
        (state, meta), step = found
        return state, meta, step

    def newest_sound(self, attempt: Callable[[int, dict], T], warn: Callable[[str], None], *,
                     set_aside: bool) -> tuple[tuple[T, dict], int] | None:
        """((attempt(step, meta), meta), step) for the newest step whose files read; None if none does.

        A step is damaged when its commit marker or metadata does not read, or when `attempt`
        hits a DamagedCheckpoint of this step (it reads the state). Each damaged newer step is
        reported by `warn` in one line and, when `set_aside` (training), moved out of the way.
        Any other error of `attempt` is the caller's and passes through.
        """
        for step in sorted(self.all_steps(), reverse=True):
            try:
                meta = self.restore_meta(step)
                return (attempt(step, meta), meta), step
            except DamagedCheckpoint as e:
                if e.step != step or e.directory != self.directory:
                    raise
                problem = e.problem
            if set_aside:
                warn(f"warning: checkpoint step {step} in {self.directory} is damaged ({problem}); "
                     f"moved it to {self._set_aside(step)} and falling back to the previous checkpoint")
            else:
                warn(f"warning: checkpoint step {step} in {self.directory} is damaged ({problem}); "
                     "using the previous checkpoint")
        return None

    def wait(self) -> None:
        """Blocks until every pending save is committed; CheckpointSaveError if one failed."""
        self._finish()

    def close(self) -> None:
        """Waits for the pending save, applies the retention policy (if this saved), closes, releases the lease."""
        try:
            self._finish()
            if self._saving is not None:  # a reader never deletes anything
                self._prune()
            self._manager.close()
        finally:
            self.release()

    def settle(self, error: BaseException | None) -> None:
        """After a run stopped on error: the pending save finishes or is cleaned up; the lease is released.

        On a full disk any write may fail first (metrics, a log); the save's own error, which
        names the free space and the last good step, then replaces it.
        """
        try:
            if error is not None and self._pending is not None:
                self._finish()
        finally:
            self.release()

    def release(self) -> None:
        """Gives up the writer lease, if this object holds it (also after a failure)."""
        if self._lease is not None:
            self._lease.release()
            self._lease = None

    def _finish(self) -> None:
        """Waits for the save in flight; on failure removes its partial folder and raises one line."""
        try:
            self._manager.wait_until_finished()
        except Exception as e:
            if self._pending is None:
                raise
            self._failed(self._pending, e)
        self._pending = None

    def _failed(self, step: int, error: BaseException) -> None:
        """Raises CheckpointSaveError for step, after removing the folder the failed save left."""
        self._pending = None
        reason, no_space = write_failure(error)
        removed = []
        if jax.process_index() == 0:
            removed = remove_partial_saves(self.directory, only_step=step)
        free = free_bytes(self.directory)
        space = f" ({megabytes(free)} free; a checkpoint takes about {megabytes(self._step_bytes())})" \
            if no_space and free is not None and self._step_bytes() else ""
        good = [s for s in self.all_steps() if s != step and commit_problem(self.directory / str(s)) is None]
        last = f"last good checkpoint: step {max(good)}" if good else "no checkpoint has been committed yet"
        advice = ("free some space (or lower train.keep_checkpoints), then" if no_space else "fix that, then")
        raise CheckpointSaveError(
            f"could not write checkpoint step {step} to {self.directory}: {reason}{space}; "
            f"{'removed its partial folder ' + ', '.join(removed) + '; ' if removed else ''}{last}; "
            f"{advice} rerun the same command to resume") from error

    def _space_shortfall(self, state: TrainState) -> tuple[int, int] | None:
        """(bytes the next save needs, bytes free) when it looks like it will not fit, else None."""
        self._last_state_bytes = sum(x.nbytes for x in jax.tree.leaves(state) if hasattr(x, "nbytes"))
        need, free = self._step_bytes(), free_bytes(self.directory)
        if free is None or free >= need * _SPACE_MARGIN:
            return None
        return need, free

    def _step_bytes(self) -> int:
        """Size of a checkpoint: the newest committed one on disk (measured once), else the state's arrays."""
        latest = self._manager.latest_step()
        if latest is not None and latest not in self._sizes and (self.directory / str(latest)).is_dir():
            self._sizes[latest] = tree_bytes(self.directory / str(latest))
        return self._sizes.get(latest, self._last_state_bytes)

    def _prune(self) -> None:
        """Deletes committed steps beyond the last `keep` and the best; call with no save in flight."""
        steps = sorted(self.all_steps())
        kept = set(steps[-self._keep:])
        best = self._best_step(steps)
        if best is not None:
            kept.add(best)
        for step in steps:
            if step not in kept:
                self._manager.delete(step)

    def _best_step(self, steps: list[int]) -> int | None:
        if not self._best_metric:
            return None
        scored = []
        for step in steps:
            if step not in self._metrics:
                try:
                    self._metrics[step] = self.restore_meta(step).get("metrics") or {}
                except Exception:  # an unreadable step is never the best
                    self._metrics[step] = {}
            value = self._metrics[step].get(self._best_metric)
            if value is not None:
                scored.append((value if self._best_mode == "min" else -value, -step, step))
        return min(scored)[2] if scored else None

    def _set_aside(self, step: int) -> pathlib.Path:
        """Moves a damaged step out of the manager's sight (never deletes it)."""
        target = self.workdir / DAMAGED_DIR / f"{step}-{time.strftime('%Y%m%d-%H%M%S')}"
        if jax.process_index() == 0:
            target.parent.mkdir(parents=True, exist_ok=True)
            os.rename(self.directory / str(step), target)
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices(f"meshlm-set-aside-{step}")
        self._manager.reload()
        return target

    def _test_hooks(self) -> None:
        """MESHLM_TEST_HOLD_COMMIT and MESHLM_TEST_DISK_FULL (see the module docstring)."""
        hold = os.environ.get("MESHLM_TEST_HOLD_COMMIT", "")
        if hold:
            step, seconds = hold.split(":")
            if self._saving == int(step):
                time.sleep(float(seconds))
        if os.environ.get("MESHLM_TEST_DISK_FULL", "") == str(self._saving):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC),
                          str(self.directory / f"{self._saving}{TMP_MARKER}" / "_CHECKPOINT_METADATA"))


def commit_problem(step_dir: pathlib.Path) -> str | None:
    """Why a step folder is not a committed checkpoint, or None when its commit marker is sound."""
    marker = step_dir / COMMIT_FILE
    try:
        committed = json.loads(marker.read_text()).get("commit_timestamp_nsecs")
    except FileNotFoundError:
        return f"no commit marker {COMMIT_FILE}"
    except (OSError, ValueError) as e:
        return f"unreadable commit marker {COMMIT_FILE}: {_first_line(e)}"
    if not committed:
        return f"commit marker {COMMIT_FILE} has no commit time"
    missing = [item for item in ("state", "meta") if not (step_dir / item).is_dir()]
    return f"missing {', '.join(missing)}" if missing else None


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0][:200]}" if text else type(error).__name__
