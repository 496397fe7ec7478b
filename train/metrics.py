"""Metric sinks: a stdout line, workdir/metrics.jsonl and TensorBoard events (process 0 only)."""

from __future__ import annotations

import json
import math
import pathlib
import sys
import time
from typing import Mapping

import tensorboardX


class MetricWriter:
    """Writes scalars by step to stdout, JSONL and TensorBoard; silent on other processes."""

    def __init__(self, workdir: str | pathlib.Path, *, enabled: bool = True):
        self.enabled = enabled
        if not enabled:
            return
        workdir = pathlib.Path(workdir)
        self._jsonl = open(workdir / "metrics.jsonl", "a", encoding="utf-8")
        self._tb = tensorboardX.SummaryWriter(str(workdir / "tensorboard"))

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
            print(f"[{split}] step {step}: " + "  ".join(f"{k} {_fmt(v)}" for k, v in values.items()), flush=True)

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

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
