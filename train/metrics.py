"""Metric sinks: a stdout line, workdir/metrics.jsonl and TensorBoard events (process 0 only)."""

from __future__ import annotations

import json
import math
import pathlib
import sys
import time
from typing import Callable, Mapping

import tensorboardX


class MetricWriter:
    """Writes scalars by step to stdout, JSONL and TensorBoard; silent on other processes."""

    def __init__(self, workdir: str | pathlib.Path, *, enabled: bool = True,
                 echo: Callable[[str], None] = print, resume_step: int = 0):
        """`resume_step`: records after it (written before a crash) are dropped, not repeated."""
        self.enabled = enabled
        self._echo = echo
        if not enabled:
            return
        workdir = pathlib.Path(workdir)
        path = workdir / "metrics.jsonl"
        if resume_step and path.exists():
            kept = [line for line in path.read_text(encoding="utf-8").splitlines()
                    if line.strip() and json.loads(line)["step"] <= resume_step]
            path.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
        self._jsonl = open(path, "a", encoding="utf-8")
        self._tb = tensorboardX.SummaryWriter(
            str(workdir / "tensorboard"), purge_step=resume_step + 1 if resume_step else None)

    def write(self, step: int, split: str, scalars: Mapping[str, float], *, echo: bool = True) -> None:
        if not self.enabled:
            return
        values = {k: float(v) for k, v in scalars.items()}
        self._jsonl.write(json.dumps({"step": step, "split": split, "time": time.time(), **values}) + "\n")
        self._jsonl.flush()
        for name, value in values.items():
            if math.isfinite(value):
                self._tb.add_scalar(f"{split}/{name}", value, step)
        if echo:
            self._echo(f"[{split}] step {step}: " + "  ".join(f"{k} {_fmt(v)}" for k, v in values.items()))

    def close(self) -> None:
        if self.enabled:
            self._jsonl.close()
            self._tb.close()


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
    path = pathlib.Path(workdir) / METRICS_FILE
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
