"""Exact resume and preemption of a real `python -m train.main` process.

A run is killed with SIGKILL at several points (before its first step, in the middle of an
asynchronous save, after it resumed) and restarted with the same command each time; one is
stopped with SIGTERM. Each ends bitwise equal to one uninterrupted run.
"""

import os
import pathlib
import signal
import subprocess
import sys
import threading
import time

import jax
import numpy as np
import pytest

from tests.checkpoint_fixtures import cache_of, checkpoint_config, prepared_seed, seeded_workdir
from tests.test_resume import _final_state

ROOT = pathlib.Path(__file__).resolve().parents[1]
STEPS = 8
pytestmark = pytest.mark.slow


class Run:
    """One `python -m train.main` process whose output lines are collected as they come."""

    def __init__(self, config_file: pathlib.Path, workdir: pathlib.Path, **env):
        self.lines: list[str] = []
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "train.main", f"--config={config_file}", f"--workdir={workdir}"],
            cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT), **env},
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self._reader = threading.Thread(target=lambda: self.lines.extend(iter(self.proc.stdout.readline, "")))
        self._reader.start()

    def signal_when(self, condition, signum: int, timeout: float = 180) -> None:
        """Sends `signum` as soon as `condition()` holds; fails if the run ends first."""
        deadline = time.monotonic() + timeout
        while not condition():
            assert self.proc.poll() is None, "run ended before the kill point:\n" + "".join(self.lines)
            assert time.monotonic() < deadline, "kill point never reached:\n" + "".join(self.lines)
            time.sleep(0.02)
        self.proc.send_signal(signum)

    def said(self, prefix: str):
        return lambda: any(line.startswith(prefix) for line in self.lines)

    def finish(self, timeout: float = 180) -> int:
        code = self.proc.wait(timeout)
        self._reader.join()
        return code

    @property
    def output(self) -> str:
        return "".join(self.lines)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """(config file, seed workdir, reference final state of an uninterrupted run)."""
    seed = prepared_seed(tmp_path_factory)
    base = tmp_path_factory.mktemp("kill")
    config_file = base / "tiny.py"
    config_file.write_text(
        "import pathlib\nfrom tests.checkpoint_fixtures import checkpoint_config\n"
        f"def get_config():\n    return checkpoint_config(pathlib.Path({str(cache_of(seed))!r}), steps={STEPS})\n")
    straight = seeded_workdir(seed, base / "straight")
    run = Run(config_file, straight)
    assert run.finish() == 0, run.output
    config = checkpoint_config(cache_of(seed), steps=STEPS)
    return config_file, seed, _final_state(config, straight, STEPS)


def _assert_same(setup, workdir):
    config_file, seed, reference = setup
    final = _final_state(checkpoint_config(cache_of(seed), steps=STEPS), workdir, STEPS)
    assert int(final["step"]) == STEPS
    for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(reference), jax.tree.leaves(final)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=jax.tree_util.keystr(path))


def test_sigkill_anywhere_then_rerun_is_bitwise_equal(setup, tmp_path):
    config_file, seed, _ = setup
    workdir = seeded_workdir(seed, tmp_path / "w")
    steps_dir = workdir / "checkpoints"

    run = Run(config_file, workdir)  # 1: during start-up, before any step
    run.signal_when(run.said("model:"), signal.SIGKILL)
    assert run.finish() == -signal.SIGKILL

    # 2: in the middle of the asynchronous save of step 4 (held just before its commit).
    run = Run(config_file, workdir, MESHLM_TEST_HOLD_COMMIT="4:120")
    run.signal_when(lambda: any(steps_dir.glob("4.orbax-checkpoint-tmp*")), signal.SIGKILL)
    assert run.finish() == -signal.SIGKILL
    assert (steps_dir / "2").is_dir() and not (steps_dir / "4").exists(), sorted(os.listdir(steps_dir))

    run = Run(config_file, workdir)  # 3: soon after resuming from step 2
    run.signal_when(run.said("[train] step 4"), signal.SIGKILL)
    assert run.finish() == -signal.SIGKILL
    assert "resumed from checkpoint step 2" in run.output

    run = Run(config_file, workdir)  # 4: to the end
    assert run.finish() == 0, run.output
    assert "resumed from checkpoint step" in run.output
    _assert_same(setup, workdir)


def test_sigterm_saves_commits_and_exits_then_resumes(setup, tmp_path):
    config_file, seed, _ = setup
    workdir = seeded_workdir(seed, tmp_path / "w")
    run = Run(config_file, workdir)
    run.signal_when(run.said("model:"), signal.SIGTERM)  # arrives during compile: handled after step 1
    assert run.finish() == 0, run.output
    assert f"preempted (SIGTERM): saved and committed step 1 in {workdir / 'checkpoints'}" in run.output
    assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == ["1"]

    run = Run(config_file, workdir)
    assert run.finish() == 0, run.output
    assert "resumed from checkpoint step 1" in run.output
    _assert_same(setup, workdir)
