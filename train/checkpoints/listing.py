"""A workdir's checkpoints as a listing: steps, commit times, sizes and metrics.

Reads only files (no device work, no orbax restore): each step's commit time and size, the eval metrics
stored in its meta, and the train/eval lines of workdir/metrics.jsonl at that step. Steps
that never committed and damaged steps that were set aside are listed apart.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import pathlib

from data import remote
from train.checkpoints.lease import is_partial_save
from train.checkpoints.manager import COMMIT_FILE, DAMAGED_DIR, commit_problem
from train.config import ConfigError

_SHOWN = ("loss", "accuracy", "perplexity")


@dataclasses.dataclass
class CheckpointInfo:
    """One step folder: when it committed, how big it is, the metrics at its step."""

    step: int
    committed: datetime.datetime | None  # None: no sound commit marker
    size_bytes: int
    metrics: dict[str, float]  # "eval/loss", "train/loss", ...
    problem: str | None = None


def list_checkpoints(workdir: str | pathlib.Path) -> tuple[list[CheckpointInfo], list[str], list[str]]:
    """(committed steps in order, uncommitted folders, set-aside damaged folders) of a workdir."""
    workdir = remote.as_path(workdir)
    if not workdir.is_dir():
        raise ConfigError(f"--workdir={workdir} does not exist; pass the workdir of a training run")
    directory = workdir / "checkpoints"
    if not directory.is_dir():
        raise ConfigError(f"--workdir={workdir} has no checkpoints/; pass the workdir of a training run")
    logged = _logged_metrics(workdir / "metrics.jsonl")
    steps, partial = [], []
    for path in sorted(directory.iterdir(), key=lambda p: (len(p.name), p.name)):
        if not path.name.isdigit() or is_partial_save(path):
            partial.append(path.name)
            continue
        step = int(path.name)
        metrics = dict(logged.get(step, {}))
        metrics.update({f"eval/{k}": v for k, v in _stored_metrics(path).items()})
        problem = commit_problem(path)
        steps.append(CheckpointInfo(step, None if problem else _commit_time(path), _size(path), metrics, problem))
    damaged = sorted(p.name for p in (workdir / DAMAGED_DIR).iterdir()) if (workdir / DAMAGED_DIR).is_dir() else []
    return steps, partial, damaged


def format_listing(workdir: str | pathlib.Path) -> str:
    """The listing as text: one line per step, then the uncommitted and damaged folders."""
    steps, partial, damaged = list_checkpoints(workdir)
    lines = [f"checkpoints in {remote.absolute(workdir) / 'checkpoints'}"]
    if not steps:
        lines.append("  (none committed yet)")
    else:
        lines.append(f"  {'step':>8}  {'committed (UTC)':19}  {'size':>9}  metrics")
    for info in steps:
        when = info.committed.strftime("%Y-%m-%d %H:%M:%S") if info.committed else "NOT COMMITTED".ljust(19)
        shown = "  ".join(f"{k} {v:.4g}" for k, v in sorted(info.metrics.items())
                          if k.split("/")[1] in _SHOWN) or "-"
        note = f"  [{info.problem}]" if info.problem else ""
        lines.append(f"  {info.step:>8}  {when}  {_human(info.size_bytes):>9}  {shown}{note}")
    if partial:
        lines.append(f"  unfinished saves (ignored on restore): {', '.join(partial)}")
    if damaged:
        lines.append(f"  damaged, set aside in {DAMAGED_DIR}/: {', '.join(damaged)}")
    return "\n".join(lines)


def _logged_metrics(path: pathlib.Path) -> dict[int, dict[str, float]]:
    """{step: {"train/loss": ..., "eval/accuracy": ...}} from metrics.jsonl."""
    found: dict[int, dict[str, float]] = {}
    if not path.is_file():
        return found
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue  # a line cut short by a kill
        step, split = record.pop("step", None), record.pop("split", "train")
        record.pop("time", None)
        if isinstance(step, int):
            found.setdefault(step, {}).update({f"{split}/{k}": v for k, v in record.items()
                                               if isinstance(v, (int, float))})
    return found


def _stored_metrics(step_dir: pathlib.Path) -> dict[str, float]:
    """The eval metrics a checkpoint's meta recorded at save time ({} if none)."""
    try:
        return json.loads((step_dir / "meta" / "metadata").read_text()).get("metrics") or {}
    except (OSError, ValueError, AttributeError):
        return {}


def _commit_time(step_dir: pathlib.Path) -> datetime.datetime:
    nanos = json.loads((step_dir / COMMIT_FILE).read_text())["commit_timestamp_nsecs"]
    return datetime.datetime.fromtimestamp(nanos / 1e9, tz=datetime.timezone.utc)


def _size(path: remote.AnyPath) -> int:
    return remote.tree_bytes(path)


def _human(num_bytes: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if num_bytes < 1024 or unit == "GB":
            return f"{num_bytes:.0f} {unit}" if unit == "B" else f"{num_bytes:.1f} {unit}"
        num_bytes /= 1024
    return f"{num_bytes:.1f} TB"
