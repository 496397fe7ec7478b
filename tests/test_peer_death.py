"""A dead process in a multi-process job: the others stop at once with one line naming it.

Two local processes (`./launch.sh local --processes=2`, gloo on CPU) train a tiny model; one
is killed with SIGKILL at a step or in the middle of an asynchronous save (held just before
its commit), each process in turn. The survivor must stop within seconds with one line
naming the dead process and the step to resume from (never JAX's heartbeat dump), the last
committed checkpoint must survive, and the job's restart must remove the dead save and
resume from that checkpoint. Faster tests cover a process that fails with its own error,
the stderr relay (JAX's abort dump -> one line) and the launcher's SIGKILL after its grace.
"""

import os
import pathlib
import signal
import subprocess
import sys
import threading
import time

import pytest

from tests.checkpoint_fixtures import cache_of, prepared_seed, seeded_workdir

ROOT = pathlib.Path(__file__).resolve().parents[1]
STEPS = 8

# What JAX 0.10.2 printed on a process whose coordinator (process 0) was killed, and on
# process 0 when process 1 stopped sending heartbeats (abridged: the stack traces are longer).
COORDINATOR_GONE = b"""\
E1206 18:43:18.362365   25143 coordination_service_agent.cc:289] Polled an error from coordination service (this can be an error from this or another task).
F1206 18:43:18.362398   25143 client.h:80] Terminating process because the JAX distributed service detected fatal errors. This most likely indicates that another task died; see the other task logs for more details.
Additional GRPC error information from remote target coordination_service while calling /xla.coordination.CoordinationService/PollForError:
:UNKNOWN:Error received from peer  {grpc_status:14, grpc_message:"Socket closed"}
*** Check failure stack trace: ***
    @     0x7f2f7b240634  absl::lts_20260107::log_internal::LogMessage::SendToLog()
    @     0x7f2f772eb505  std::_Function_handler<>::_M_invoke()
"""
HEARTBEATS_MISSED = b"""\
E1206 18:42:29.250772   23757 coordination_service.cc:1549] [17879108822245812715] Use error polling to propagate the following error to all tasks: UNAVAILABLE: The following tasks are unhealthy (stopped sending heartbeats):
1
The tasks have crashed. Check the task logs for an earlier error, or scheduler events (e.g. preemption, eviction) to debug further.
F1206 18:42:29.251436   23775 client.h:80] Terminating process because the JAX distributed service detected fatal errors.
*** Check failure stack trace: ***
"""


def _relay(stream: bytes, workdir: pathlib.Path | None = None) -> list[str]:
    from train.stderr_relay import CONTROL

    if workdir is not None:
        stream = CONTROL + b"workdir " + bytes(workdir) + b"\n" + stream
    code = f"import sys; sys.path.insert(0, {str(ROOT)!r}); from train.stderr_relay import relay; relay()"
    done = subprocess.run([sys.executable, "-c", code, "1", "2", "10.0.0.1:1234"], input=stream,
                          capture_output=True, timeout=60)
    return done.stdout.decode().splitlines()


def test_the_relay_turns_jax_abort_dumps_into_one_line(tmp_path):
    (tmp_path / "checkpoints" / "6").mkdir(parents=True)
    (tmp_path / "checkpoints" / "6" / "_CHECKPOINT_METADATA").write_text("{}")
    (tmp_path / "checkpoints" / "8.orbax-checkpoint-tmp").mkdir()
    lines = _relay(b"[train] step 7: loss 5.1\n" + COORDINATOR_GONE, tmp_path)
    assert lines == [
        "[train] step 7: loss 5.1",
        "error: process 0 of 2 (the coordinator, 10.0.0.1:1234) died or became unreachable: JAX's coordination "
        "service closed the connection; JAX stopped process 1 too (--debug shows its report); rerun the job to "
        f"resume from the last committed checkpoint, step 6 in {tmp_path / 'checkpoints'}"]
    assert _relay(HEARTBEATS_MISSED)[0].startswith(
        "error: process 1 of 2 stopped sending heartbeats (it died or hangs); JAX stopped process 1 too")
    from train.stderr_relay import CONTROL

    said = _relay(CONTROL + b"say error: process 0 of 2 died; stopping\n" + COORDINATOR_GONE)
    assert said == ["error: process 0 of 2 died; stopping"], "after the watchdog's line, JAX's dump is dropped"


def test_the_local_launcher_kills_what_sigterm_cannot_stop(tmp_path):
    started = time.monotonic()
    done = subprocess.run([str(ROOT / "launch.sh"), "local", "--processes=2", "--grace=1",
                           "--module=tests.launcher_stub", "--", str(tmp_path / "ready")], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 3, done.stderr
    assert "launch.sh: process 1 exited with status 3; stopping the others (SIGTERM, then SIGKILL after 1s)" \
        in done.stderr
    assert "launch.sh: processes still running 1s after SIGTERM; sending SIGKILL" in done.stderr
    stub = int((tmp_path / "ready").read_text())
    assert not pathlib.Path(f"/proc/{stub}").exists() and time.monotonic() - started < 60


@pytest.mark.parametrize("bad", [0, 1])
def test_a_process_that_fails_with_its_own_error_stops_the_other(bad):
    done = subprocess.run([str(ROOT / "launch.sh"), "local", "--processes=2", "--module=tests.failing_job_stub"],
                          cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT), "BAD": str(bad)},
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stdout + done.stderr
    assert f"launch.sh: process {bad} exited with status 2" in done.stderr
    lines = [line for line in done.stdout.splitlines() if "error:" in line]
    assert lines[0] == f"[p{bad}] error: process {bad} has a bad input", done.stdout
    other = 1 - bad
    assert len(lines) == 2 and lines[1].startswith(f"[p{other}] error: process {bad} of 2"), done.stdout
    assert "stopped with an error (see its output)" in lines[1] and "Traceback" not in done.stdout


class Job:
    """`./launch.sh local --processes=2 -- ...` in the background, its output collected as it comes."""

    def __init__(self, config_file: pathlib.Path, workdir: pathlib.Path, **env):
        self.lines: list[str] = []
        self.proc = subprocess.Popen(
            [str(ROOT / "launch.sh"), "local", "--processes=2", "--grace=20", "--", f"--config={config_file}",
             f"--workdir={workdir}", "--config.mesh.shape=2,2,2"],
            cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT), **env}, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True)
        self._reader = threading.Thread(target=lambda: self.lines.extend(iter(self.proc.stdout.readline, "")))
        self._reader.start()

    def kill_when(self, process: int, said: str, timeout: float = 300) -> float:
        """SIGKILLs process `process` once a line contains `said`; returns when it was sent."""
        deadline = time.monotonic() + timeout
        while not any(said in line for line in self.lines):
            assert self.proc.poll() is None, "the job ended before the kill point:\n" + self.output
            assert time.monotonic() < deadline, "kill point never reached:\n" + self.output
            time.sleep(0.05)
        said_pid = f"launch.sh: process {process}: pid"
        pid = next(int(line.split()[-1]) for line in self.lines if line.startswith(said_pid))
        os.kill(pid, signal.SIGKILL)
        return time.monotonic()

    def finish(self, timeout: float = 300) -> int:
        code = self.proc.wait(timeout)
        self._reader.join()
        return code

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def of(self, process: int) -> list[str]:
        """The lines of one process, without the launcher's [pI] prefix and gloo's chatter."""
        prefix = f"[p{process}] "
        return [line[len(prefix):].rstrip("\n") for line in self.lines
                if line.startswith(prefix) and "[Gloo]" not in line]


def _assert_stopped(job: Job, killed_at: float, dead: int, steps: pathlib.Path, step: int) -> None:
    """The survivor stopped within 15 s with one line naming the dead process; no traceback or dump."""
    code = job.finish()
    assert time.monotonic() - killed_at < 15, job.output
    assert code == 128 + signal.SIGKILL, job.output  # the launcher reports the killed one
    survivor = 1 - dead
    errors = [line for line in job.of(survivor) if line.startswith("error:")]
    assert len(errors) == 1, job.output
    assert errors[0].startswith(f"error: process {dead} of 2"), errors[0]
    assert errors[0].endswith(f"resume from the last committed checkpoint, step {step} in {steps}"), errors[0]
    for noise in ("Traceback", "Check failure", "coordination_service", "heartbeat"):
        assert noise not in job.output, job.output


@pytest.mark.slow
def test_killing_either_process_at_a_step_or_in_a_save_stops_the_other_and_the_job_resumes(tmp_path,
                                                                                             tmp_path_factory):
    seed = prepared_seed(tmp_path_factory)
    config_file = tmp_path / "tiny.py"
    config_file.write_text(
        "import pathlib\nfrom tests.checkpoint_fixtures import checkpoint_config\n"
        f"def get_config():\n    return checkpoint_config(pathlib.Path({str(cache_of(seed))!r}), steps={STEPS})\n")
    workdir = seeded_workdir(seed, tmp_path / "w")
    steps = workdir / "checkpoints"

    job = Job(config_file, workdir)  # 1: process 1 at a step
    _assert_stopped(job, job.kill_when(1, "[p0] [train] step 3:"), dead=1, steps=steps, step=2)

    job = Job(config_file, workdir, MESHLM_TEST_HOLD_COMMIT="4:120")  # 2: process 0 in the save of step 4
    killed = job.kill_when(0, "[p0] [train] step 5:")
    _assert_stopped(job, killed, dead=0, steps=steps, step=2)
    assert sorted(p.name for p in steps.iterdir()) == ["2", "4.orbax-checkpoint-tmp"]

    job = Job(config_file, workdir, MESHLM_TEST_HOLD_COMMIT="6:120")  # 3: process 1 in the save of step 6
    killed = job.kill_when(1, "[p0] [train] step 7:")
    _assert_stopped(job, killed, dead=1, steps=steps, step=4)
    assert "removed 1 partial save(s) left in" in job.output and "resumed from checkpoint step 2" in job.output

    job = Job(config_file, workdir)  # 4: process 0 at a step
    _assert_stopped(job, job.kill_when(0, "[p0] [train] step 5:"), dead=0, steps=steps, step=4)
    assert "removed 1 partial save(s) left in" in job.output and "resumed from checkpoint step 4" in job.output
    assert sorted(p.name for p in steps.iterdir()) == ["2", "4"]  # a restart finishes: test_disk_full.py
