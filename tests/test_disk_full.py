"""A full disk during a save, and the writer lease that makes removing partial saves safe.

The end-to-end test trains on a small tmpfs mounted for the test (where this machine lets a
test mount one; as root here) with a ballast file leaving room for one and a half
checkpoints: the second save fails. Without mount rights (CI) the second save fails through
MESHLM_TEST_DISK_FULL, an OSError(ENOSPC) raised in the background save just before its
commit. Either way the run ends with one line and no traceback, its partial folder is gone,
and once space is freed the same command resumes from the last good step and finishes.
"""

import contextlib
import os
import pathlib
import socket
import subprocess
import sys
import time

import pytest

from train.checkpoints import lease as lease_module
from train.checkpoints.lease import LEASE_FILE, Lease, remove_partial_saves
from train.config import ConfigError

from tests.checkpoint_fixtures import cache_of, prepared_seed, seeded_workdir

ROOT = pathlib.Path(__file__).resolve().parents[1]
STEPS = 6


@contextlib.contextmanager
def small_filesystem(path: pathlib.Path, megabytes: int):
    """A tmpfs of that size at path, or None where this machine does not let us mount one.

    MESHLM_TEST_NO_MOUNT=1 takes the other path on a machine that could mount, to try CI's.
    """
    path.mkdir(parents=True)
    mounted = False
    if os.geteuid() == 0 and not os.environ.get("MESHLM_TEST_NO_MOUNT"):
        command = ["mount", "-t", "tmpfs", "-o", f"size={megabytes}m", "tmpfs", str(path)]
        mounted = subprocess.run(command, capture_output=True).returncode == 0
    try:
        yield path if mounted else None
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(path)], check=False)


def _train(config_file, workdir, **env) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "train.main", f"--config={config_file}", f"--workdir={workdir}"], cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), **env}, capture_output=True, text=True, timeout=300)


def _checkpoint_bytes(config) -> int:
    """About the size on disk of one checkpoint of this config: its arrays, plus Orbax's small files."""
    import jax

    from train.mesh import make_mesh
    from train.optimizer import make_optimizer
    from train.state import state_layout

    tx, _ = make_optimizer(config.optim, config.train.steps)
    layout = state_layout(config.model, tx, make_mesh(config.mesh.shape))
    return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(layout.abstract)) + 200_000


@pytest.mark.slow
def test_a_full_disk_ends_the_run_in_one_line_and_the_rerun_finishes(tmp_path, tmp_path_factory):
    from tests.checkpoint_fixtures import checkpoint_config

    seed = prepared_seed(tmp_path_factory)
    config_file = tmp_path / "tiny.py"
    config_file.write_text(
        "import pathlib\nfrom tests.checkpoint_fixtures import checkpoint_config\n"
        f"def get_config():\n    return checkpoint_config(pathlib.Path({str(cache_of(seed))!r}), steps={STEPS})\n")
    with small_filesystem(tmp_path / "disk", megabytes=24) as disk:
        workdir = seeded_workdir(seed, (disk or tmp_path) / "w")
        if disk is not None:  # room for one and a half checkpoints: step 2 fits, step 4 does not
            size = _checkpoint_bytes(checkpoint_config(cache_of(seed), steps=STEPS))
            ballast = disk / "ballast"
            ballast.write_bytes(b"\0" * (os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize - int(1.5 * size)))
            failed = _train(config_file, workdir)
        else:
            failed = _train(config_file, workdir, MESHLM_TEST_DISK_FULL="4")
        errors = failed.stderr.strip().splitlines()
        assert failed.returncode == 2 and len(errors) == 1 and "Traceback" not in failed.stderr, failed.stderr
        steps = workdir / "checkpoints"
        assert errors[0].startswith(f"error: could not write checkpoint step 4 to {steps}: No space left on device")
        assert "removed its partial folder 4.orbax-checkpoint-tmp; last good checkpoint: step 2;" in errors[0]
        assert errors[0].endswith("free some space (or lower train.keep_checkpoints), then rerun the same command "
                                  "to resume")
        assert sorted(p.name for p in steps.iterdir()) == ["2"]
        if disk is not None:
            assert "warning: checkpoint step 4 needs about" in failed.stdout
            assert " free; a checkpoint takes about " in errors[0]
            ballast.unlink()
        resumed = _train(config_file, workdir)
        assert resumed.returncode == 0, resumed.stderr[-3000:]
        assert f"resumed from checkpoint step 2 in {steps}" in resumed.stdout
        assert str(STEPS) in {p.name for p in steps.iterdir()} and not (workdir / LEASE_FILE).exists()


def _lease_of(workdir: pathlib.Path, pid: int, host: str | None = None, processes: int = 1) -> None:
    """Writes the lease a job with that pid (on that host) would hold."""
    import json

    record = {"token": "t", "host": host or socket.gethostname(), "boot_id": lease_module._boot_id(),
              "pid": pid, "process_start": lease_module._process_start(pid), "processes": processes,
              "started": "then"}
    (workdir / LEASE_FILE).write_text(json.dumps(record))


def test_a_live_writer_keeps_its_partial_save_and_a_dead_ones_is_removed(tmp_path):
    partial = tmp_path / "checkpoints" / "8.orbax-checkpoint-tmp"
    (partial / "state").mkdir(parents=True)
    with subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"]) as other:
        _lease_of(tmp_path, other.pid)
        with pytest.raises(ConfigError, match=f"--workdir={tmp_path} is being written by another training job "
                                              f"\\(pid {other.pid} on {socket.gethostname()}"):
            Lease(tmp_path).acquire(print)
        assert partial.is_dir()
        other.kill()
    lines = []
    held = Lease(tmp_path)
    held.acquire(lines.append)  # its holder is dead: at once, without waiting
    assert lines == [] and remove_partial_saves(tmp_path / "checkpoints") == ["8.orbax-checkpoint-tmp"]
    held.release()
    assert not (tmp_path / LEASE_FILE).exists()


def test_another_hosts_lease_is_waited_out_unless_it_is_renewed(tmp_path, monkeypatch):
    monkeypatch.setattr(lease_module, "STALE_SECONDS", 2.0)
    _lease_of(tmp_path, 1, host="elsewhere")
    lines, started = [], time.monotonic()
    held = Lease(tmp_path)
    held.acquire(lines.append)
    assert time.monotonic() - started >= 1.5
    assert lines[0].startswith(f"waiting for the lease {tmp_path / LEASE_FILE} of pid 1 on elsewhere")
    held.release()
    _lease_of(tmp_path, 1, host="elsewhere")
    with subprocess.Popen([sys.executable, "-c", "import os, sys, time\nfor _ in range(30):\n"
                           f"    time.sleep(0.3); os.utime({str(tmp_path / LEASE_FILE)!r})"]) as renewer:
        with pytest.raises(ConfigError, match="is being written by another training job"):
            Lease(tmp_path).acquire(print)
        renewer.kill()


def test_orbax_writer_errors_stay_off_the_console_and_others_do_not():
    """The console filter drops Orbax's writer errors, including asyncio's report of an unawaited writer task."""
    import logging

    from train.program import background_writer_error

    def record(name: str, level: int, pathname: str, message: str) -> logging.LogRecord:
        return logging.LogRecord(name, level, pathname, 1, message, None, None)

    orbax = f"{os.sep}site-packages{os.sep}orbax{os.sep}checkpoint{os.sep}_src{os.sep}serialization{os.sep}serialization.py"
    base_events = f"{os.sep}lib{os.sep}asyncio{os.sep}base_events.py"
    unawaited = ("Task exception was never retrieved\nfuture: <Task finished name='Task-400' coro=<write_fragment() "
                 f"done, defined at {orbax}:188> exception=ValueError('RESOURCE_EXHAUSTED: No space left on device')>")
    assert background_writer_error(record("asyncio", logging.ERROR, base_events, unawaited))
    assert background_writer_error(record("absl", logging.ERROR, orbax, "write failed"))
    assert not background_writer_error(record("asyncio", logging.ERROR, base_events, "Task exception was never "
                                              "retrieved\nfuture: <Task finished coro=<fetch() defined at /app/x.py:3>>"))
    assert not background_writer_error(record("absl", logging.WARNING, orbax, "slow write"))
    assert not background_writer_error(record("absl", logging.ERROR, "/app/train/loop.py", "something else"))
