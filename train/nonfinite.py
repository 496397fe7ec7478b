"""NaN and Inf: the step flags a non-finite loss or gradient; the loop reads it with the metrics.

The flag rides along with the metrics that the loop fetches one step late anyway, so the
check costs no extra host sync. When the step also counted token ids outside the
vocabulary, the message blames the data, not the learning rate. A save always fetches its own step's metrics first and
checks the parameters themselves (`check_params`, one pass per save), so a non-finite
state is never written: the run stops (or, when configured, the jitted step has already
dropped the update and the loop counts it).
"""

from __future__ import annotations

from typing import Any, Callable

import jax

from train.config import ConfigError


class NonFiniteError(ConfigError):
    """Training produced a non-finite loss, gradient or parameter; the message names the step."""


class NonFiniteGuard:
    """Stops the run at the first non-finite step, or counts the steps whose update was skipped."""

    def __init__(self, skip: bool, skipped: int = 0, log: Callable[[str], None] = print,
                 on_stop: Callable[[], str] = lambda: "", vocab_size: int | None = None):
        """`on_stop` runs before the error is raised and returns a clause for its message."""
        self.skip = skip
        self.vocab_size = vocab_size
        self.skipped = skipped  # carried across restarts in the checkpoint's meta
        self._log = log
        self._on_stop = on_stop

    def check(self, step: int, metrics: dict[str, Any]) -> None:
        """Raises NonFiniteError (or counts a skip) when step `step` was not finite."""
        if not float(jax.device_get(metrics["nonfinite"])):
            return
        if self.skip:
            self.skipped += 1
            self._log(f"step {step}: non-finite loss or gradient; update skipped "
                      f"({self.skipped} skipped so far)")
            return
        loss = float(jax.device_get(metrics["loss"]))
        where = self._on_stop()
        stopped = f"step {step}: non-finite loss or gradient (loss {loss}); stopped without saving it"
        bad_ids = int(float(jax.device_get(metrics.get("out_of_vocab", 0.0))))
        if bad_ids:  # garbage in: no learning rate fixes that
            raise NonFiniteError(
                f"{stopped}; its batch held {bad_ids} token ids outside the model's vocabulary "
                f"(model.vocab_size={self.vocab_size}): the training data or its packed-row cache is "
                f"damaged, not the learning rate{'; ' + where if where else ''}")
        raise NonFiniteError(
            f"{stopped}{'; ' + where if where else ''}; lower optim.learning_rate or set "
            "--config.train.skip_nonfinite=true to skip such updates")

    def check_params(self, step: int, finite: Any) -> None:
        """Raises NonFiniteError when the parameters about to be saved at `step` are not all finite."""
        if bool(jax.device_get(finite)):
            return
        where = self._on_stop()
        raise NonFiniteError(
            f"step {step}: the parameters are not finite (the learning rate overflowed them); "
            f"stopped without saving them{'; ' + where if where else ''}; lower optim.learning_rate")
