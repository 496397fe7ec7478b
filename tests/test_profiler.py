"""The profiler switch: a trace of exactly the chosen steps lands in workdir/profile."""

import jax
import jax.numpy as jnp
import pytest

from train.config import ConfigError, apply_override, validate
from train.profiler import StepProfiler

from tests.train_fixtures import tiny_config


def _run(profiler, steps):
    step_fn = jax.jit(lambda x: x @ x.T + 1.0)
    x = jnp.ones((64, 64))
    for step in range(steps):
        profiler.before_step(step)
        x = step_fn(x) / 64.0
        profiler.after_step(step, x)
    profiler.close()


def test_trace_of_chosen_steps_is_written(tmp_path):
    profiler = StepProfiler(tmp_path, start=2, count=2)
    _run(profiler, 6)
    traces = list((tmp_path / "profile").rglob("*.xplane.pb"))
    assert len(traces) == 1, list((tmp_path / "profile").rglob("*"))
    assert traces[0].stat().st_size > 0


@pytest.mark.parametrize("enabled,count", [(False, 2), (True, 0)])
def test_no_trace_when_off_or_not_process_zero(tmp_path, enabled, count):
    _run(StepProfiler(tmp_path, start=0, count=count, enabled=enabled), 3)
    assert not (tmp_path / "profile").exists()


def test_profile_flags_are_validated():
    config = tiny_config()
    apply_override(config, "train.profile_steps", "-1")
    with pytest.raises(ConfigError, match="train.profile_steps"):
        validate(config)
