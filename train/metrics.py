"""Metric sinks: a stdout line, workdir/metrics.jsonl and TensorBoard events (process 0 only)."""

from __future__ import annotations

import json
import math
import pathlib
import sys
import time
from typing import Callable, Mapping

import tensorboardX
from tensorboardX import record_writer

from data import remote


class MetricWriter:
    """Writes scalars by step to stdout, JSONL and TensorBoard; silent on other processes.

    In a bucket (a gs:// workdir) an object cannot be appended to: metrics.jsonl is kept
    in memory and the whole object rewritten at most every UPLOAD_SECONDS, after an eval,
    at each `flush` (the loops call it when they save a checkpoint, so the lines up to a
    committed step survive a kill, as on disk) and at close. TensorBoard's writer uploads its
    events file the same way (tensorboardX, every 120 s and at close).
    """

    UPLOAD_SECONDS = 30.0

    def __init__(self, workdir: str | pathlib.Path, *, enabled: bool = True,
                 echo: Callable[[str], None] = print, resume_step: int = 0):
        """`resume_step`: records after it (written before a crash) are dropped, not repeated."""
        self.enabled = enabled
        self._echo = echo
        if not enabled:
            return
        workdir = remote.as_path(workdir)
        path = workdir / "metrics.jsonl"
        self._bucket = remote.is_url(workdir)
        kept = []
        if (resume_step or self._bucket) and path.exists():
            kept = [line for line in path.read_text(encoding="utf-8").splitlines()
                    if line.strip() and (not resume_step or json.loads(line)["step"] <= resume_step)]
        if self._bucket:
            self._path, self._lines, self._uploaded = path, [line + "\n" for line in kept], time.monotonic()
            self._jsonl = None
        else:
            if resume_step and path.exists():
                path.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
            self._jsonl = open(path, "a", encoding="utf-8")
        self._tb = tensorboardX.SummaryWriter(
            str(workdir / "tensorboard"), purge_step=resume_step + 1 if resume_step else None)

    def write(self, step: int, split: str, scalars: Mapping[str, float], *, echo: bool = True) -> None:
        if not self.enabled:
            return
        values = {k: float(v) for k, v in scalars.items()}
        line = json.dumps({"step": step, "split": split, "time": time.time(), **values}) + "\n"
        if self._jsonl is not None:
            self._jsonl.write(line)
            self._jsonl.flush()
        else:
            self._lines.append(line)
            if split != "train" or time.monotonic() - self._uploaded >= self.UPLOAD_SECONDS:
                self._upload()
        for name, value in values.items():
            if math.isfinite(value):
                self._tb.add_scalar(f"{split}/{name}", value, step)
        if echo:
            self._echo(f"[{split}] step {step}: " + "  ".join(f"{k} {_fmt(v)}" for k, v in values.items()))

    def flush(self) -> None:
        """Makes every line written so far durable (uploads metrics.jsonl in a bucket)."""
        if self.enabled and self._jsonl is None:
            self._upload()

    def close(self) -> None:
        if self.enabled:
            if self._jsonl is not None:
                self._jsonl.close()
            else:
                self._upload()
            self._tb.close()

    def _upload(self) -> None:
        self._path.write_text("".join(self._lines), encoding="utf-8")
        self._uploaded = time.monotonic()


class _GCSEventsOnce(record_writer.GCSRecordWriter):
    """tensorboardX's bucket events writer, uploading at close only once.

    Its own close has no closed state and its __del__ closes again: every writer left for
    the garbage collector uploads its whole events file once more, retrying for two minutes
    when the bucket cannot be reached (a process exiting after its storage went away).
    """

    _closed = False

    def flush(self) -> None:
        if not self._closed:
            super().flush()

    def close(self) -> None:
        if not self._closed:
            super().close()
            self._closed = True


class _GCSEventsFactory(record_writer.GCSRecordWriterFactory):
    def open(self, path):
        return _GCSEventsOnce(path)


record_writer.register_writer_factory("gs", _GCSEventsFactory())


def _fmt(value: float) -> str:
    if value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e5):
        return f"{value:.3e}"
    return f"{value:.4f}" if abs(value) < 100 else f"{value:.1f}"


class ProgressBar:
    """A one-line bar on stderr when attached to a terminal; nothing otherwise."""

    def __init__(self, total: int, start: int, enabled: bool):
        self.enabled = enabled and sys.stderr.isatty()
        self._bar = None
        if self.enabled:
            import tqdm  # only needed on a terminal

            self._bar = tqdm.tqdm(total=total, initial=start, unit="step", dynamic_ncols=True, leave=False)

    def update(self, step: int, postfix: str = "") -> None:
        if self._bar is not None:
            self._bar.n = step
            if postfix:
                self._bar.set_postfix_str(postfix, refresh=False)
            self._bar.refresh()

    def write(self, line: str) -> None:
        """Prints a line to stdout above the bar, so the two never garble each other."""
        if self._bar is not None:
            self._bar.write(line, file=sys.stdout)
        else:
            print(line, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


METRICS_FILE, EVENTS_DIR = "metrics.jsonl", "tensorboard"


def read_metrics(workdir: str | pathlib.Path) -> list[dict]:
    """The records of workdir/metrics.jsonl, in order (a line cut short by a kill is skipped)."""
    path = remote.as_path(workdir) / METRICS_FILE  # a gs:// workdir's too
    if not path.is_file():
        raise FileNotFoundError(f"no {METRICS_FILE} in {workdir}: it is written by training on process 0")
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def text_curve(records: list[dict], *, split: str = "eval", metric: str = "loss", width: int = 40,
               max_points: int = 16) -> str:
    """One line per recorded step (at most max_points, evenly picked): the value and a bar whose
    length spans the lowest to the highest value, so a fall shows without TensorBoard."""
    points = [(r["step"], r[metric]) for r in records
              if r.get("split") == split and isinstance(r.get(metric), (int, float)) and math.isfinite(r[metric])]
    if not points:
        return f"(no {split} {metric} recorded yet)"
    if len(points) > max_points:  # keep the first and the last, evenly between
        points = [points[round(i * (len(points) - 1) / (max_points - 1))] for i in range(max_points)]
    low, high = min(v for _, v in points), max(v for _, v in points)
    digits = len(str(points[-1][0]))
    lines = []
    for step, value in points:
        filled = 1 + round((width - 1) * (value - low) / (high - low)) if high > low else width
        lines.append(f"  step {step:>{digits}}  {_fmt(value):>8}  {'#' * filled}")
    return "\n".join(lines)
