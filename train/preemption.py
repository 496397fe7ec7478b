"""Preemption: on SIGTERM the loop finishes its step, saves, waits for the commit and exits.

TPU maintenance events and SLURM send SIGTERM some time before the kill. One process
catches it with a Python handler. Several processes must all save the same step: there
JAX's preemption sync service (started by `jax.distributed.initialize`, which itself
listens for SIGTERM) propagates the notice and picks one step for every process; asking it
every step is a local flag check until a notice arrives, so it costs no collective.
"""

from __future__ import annotations

import signal
import threading
from typing import Any

import jax


class Preemption:
    """Tells the loop, at a step boundary, that every process should save and stop now."""

    def __init__(self):
        self._requested = False
        self._previous: Any = None
        self._multiprocess = jax.process_count() > 1
        if not self._multiprocess and threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._on_sigterm)

    def _on_sigterm(self, signum: int, frame: Any) -> None:
        self._requested = True

    def reached(self, step: int) -> bool:
        """True at the step to save; call at every step with the number of steps done."""
        if self._multiprocess:
            from jax.experimental import multihost_utils

            return multihost_utils.reached_preemption_sync_point(step)
        return self._requested

    def close(self) -> None:
        """Gives SIGTERM back to its previous handler."""
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None
