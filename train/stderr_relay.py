"""A relay for a multi-process job's stderr that turns JAX's fatal-error dump into one line.

When process 0 dies, the JAX coordination service it hosts goes with it, and JAX aborts
every other process at once from a C++ thread: a fatal log line and a stack trace, with no
chance for Python code to run. So each process's stderr passes through this relay, a small
process without JAX started by `install` before `jax.distributed.initialize`. It forwards
every line as is, holds lines back from the first line of a coordination-service error on,
and when the stream ends (the process is gone) prints one line in their place naming the
process that died. If the process lives on after such a report, the held lines are
forwarded a few seconds later. The watchdog (train/peers.py) sends its own verdict through
the relay as a control line; it is shown at once, and a dump that follows it is dropped.
"""

from __future__ import annotations

import os
import pathlib
import re
import select
import signal
import subprocess
import sys
import time

CONTROL = b"\x1emeshlm-relay "
_REPORT = re.compile(rb"coordination_service|JAX distributed service detected fatal errors|PollForError")
_UNHEALTHY = re.compile(rb"stopped sending heartbeats\):\s*([\d,\s]+)")
_HOLD_SECONDS = 5.0  # a held report followed by this long a life was not fatal: show it
_ROOT = str(pathlib.Path(__file__).resolve().parents[1])
_installed = False
_process: subprocess.Popen | None = None


def install(index: int, count: int, coordinator: str) -> None:
    """Sends this process's stderr (fd 2) through a relay process; call before JAX starts."""
    global _installed, _process
    read, write = os.pipe()
    code = f"import sys; sys.path.insert(0, {_ROOT!r}); from train.stderr_relay import relay; relay()"
    _process = subprocess.Popen([sys.executable, "-c", code, str(index), str(count), coordinator], stdin=read,
                                stdout=2, stderr=2, close_fds=True)  # outlives this process by design
    os.close(read)
    sys.stderr.flush()
    os.dup2(write, 2)
    os.close(write)
    _installed = True


def say_verdict(line: str) -> None:
    """Prints the watchdog's one line: through the relay, which then drops any JAX dump after it."""
    if _installed:
        _tell(b"say " + line.encode(errors="replace"))
    else:
        print(line, file=sys.stderr, flush=True)


def tell_coordinator_failed() -> None:
    """Tells the relay that process 0 is ending with its own error, not dying: its line says so."""
    _tell(b"coordinator-failed")


def tell_workdir(workdir: pathlib.Path) -> None:
    """Tells the relay the run's workdir, so that its line can name the last committed step."""
    _tell(b"workdir " + os.fsencode(str(workdir)))


def resume_hint(workdir: pathlib.Path | None) -> str:
    """'rerun ... from checkpoint step N in DIR': the newest step folder with a commit marker."""
    steps = []
    directory = pathlib.Path(workdir) / "checkpoints" if workdir else None
    if directory is not None and directory.is_dir():
        steps = [int(p.name) for p in directory.iterdir()
                 if p.name.isdigit() and (p / "_CHECKPOINT_METADATA").is_file()]
    if not steps:
        return "rerun the job to resume from the last committed checkpoint"
    return f"rerun the job to resume from the last committed checkpoint, step {max(steps)} in {directory}"


def _tell(message: bytes) -> None:
    if _installed:
        os.write(2, CONTROL + message + b"\n")


def relay() -> None:
    """The relay process: stdin is the job process's stderr, stdout the real stderr."""
    for name in ("SIGINT", "SIGTERM", "SIGHUP"):  # it ends when the stream does, and not before
        signal.signal(getattr(signal, name), signal.SIG_IGN)
    index, count, coordinator = sys.argv[1:4]
    out, held, held_since, verdict, workdir, tail = sys.stdout.buffer, [], 0.0, False, None, b""
    coordinator_failed = False
    while True:
        ready, _, _ = select.select([0], [], [], 1.0)
        chunk = os.read(0, 65536) if ready else None
        if chunk == b"":
            break
        lines = []
        if chunk:
            *lines, tail = (tail + chunk).split(b"\n")
        for line in lines:
            if line.startswith(CONTROL):
                command = line[len(CONTROL):]
                if command.startswith(b"say "):  # the watchdog's verdict: shown now, a dump after it is not
                    out.write(command[len(b"say "):] + b"\n")
                    verdict = True
                elif command.startswith(b"workdir "):
                    workdir = os.fsdecode(command[len(b"workdir "):])
                coordinator_failed = coordinator_failed or command == b"coordinator-failed"
            elif held or _REPORT.search(line):
                held_since = held_since if held else time.monotonic()
                held.append(line)
            else:
                out.write(line + b"\n")
        if held and time.monotonic() - held_since > _HOLD_SECONDS:  # the process lived on
            out.write(b"\n".join(held) + b"\n")
            held = []
        if tail and not held and chunk is None:  # a partial line (a prompt) after a pause
            out.write(tail)
            tail = b""
        out.flush()
    if tail and held:
        held.append(tail)
    elif tail:
        out.write(tail + b"\n")
    if held and not verdict:
        line = _one_line(b"\n".join(held), int(index), int(count), coordinator, workdir, coordinator_failed)
        out.write(line.encode() + b"\n")
    out.flush()


def _one_line(report: bytes, index: int, count: int, coordinator: str, workdir: str | None,
              coordinator_failed: bool = False) -> str:
    """The line that replaces JAX's dump: which process died, and what to do."""
    unhealthy = _UNHEALTHY.search(report)
    if coordinator_failed:
        who = f"process 0 of {count} (the coordinator, {coordinator}) stopped with an error (see its output)"
    elif unhealthy:
        dead = ", ".join(n.decode() for n in re.findall(rb"\d+", unhealthy.group(1)))
        who = f"process {dead} of {count} stopped sending heartbeats (it died or hangs)"
    else:
        who = (f"process 0 of {count} (the coordinator, {coordinator}) died or became unreachable: "
               "JAX's coordination service closed the connection")
    return f"error: {who}; JAX stopped process {index} too (--debug shows its report); {resume_hint(workdir)}"
