"""Captures a jax.profiler trace of train steps [start, start + count) into workdir/profile.

Process 0 only. The trace opens in TensorBoard's profile tab or in Perfetto
(ui.perfetto.dev, the *.trace.json.gz file under plugins/profile/<run>/).
"""

from __future__ import annotations

import pathlib

import jax


class StepProfiler:
    """Starts the trace before step `start` runs and stops it once step `start + count - 1` has."""

    def __init__(self, workdir: pathlib.Path, start: int, count: int, *, enabled: bool = True):
        self.directory = workdir / "profile"
        self.start, self.stop = start, start + count
        self.enabled = enabled and count > 0
        self.active = False

    def before_step(self, step: int) -> None:
        """Call before dispatching `step`; opens the trace at the first profiled step."""
        if self.enabled and not self.active and self.start <= step < self.stop:
            jax.profiler.start_trace(str(self.directory))
            self.active = True

    def after_step(self, step: int, outputs) -> None:
        """Call after dispatching `step`; closes the trace once the last profiled step has run."""
        if self.active and step + 1 >= self.stop:
            jax.block_until_ready(outputs)  # the trace must hold the steps' device work
            self.close()

    def close(self) -> None:
        if self.active:
            jax.profiler.stop_trace()
            self.active = False
