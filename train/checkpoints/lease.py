"""Who may write a workdir's checkpoints: a lease file, so that stale partial saves can be removed safely.

A save that never committed leaves a `<step>.orbax-checkpoint-tmp` folder (a kill, a full
disk). Removing one is safe only when nobody can still be writing it, and only the job that
writes a workdir knows that. So process 0 of a training job holds `workdir/writer.lease`
while it runs: JSON naming the host, boot id, pid, the process's start time and the
number of processes, renewed (its mtime touched) every RENEW_SECONDS and removed at the end.

At start-up, process 0 takes the lease if it is free; a previous holder is gone when

- there is no lease (the last job ended, or never took one);
- it ran on this host (same hostname and boot id) and its pid is no longer that process
  (not running, or running something that started at another time); a job of several
  processes is given PEER_STOP_SECONDS more since its last renewal, the bound within which
  train/peers.py stops the others of a job whose process died;
- it ran on another host and has not renewed the lease for STALE_SECONDS (mtimes are
  compared with a probe file written now, so both come from the filesystem's clock and
  hosts' clocks never meet). Start-up waits that long at most, and stops if it sees a
  renewal.

A live holder is another job writing the same workdir: the run stops with one line. Once the
lease is ours, no other writer exists, so every partial save in checkpoints/ is stale and
is removed. Plain files, atomic renames and mtimes only: no flock, so it works the same on
NFS, gcsfuse and, later, object stores.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import socket
import threading
import time
from typing import Callable

from train.config import ConfigError

LEASE_FILE = "writer.lease"
TMP_MARKER = ".orbax-checkpoint-tmp"
RENEW_SECONDS = 10.0
STALE_SECONDS = 60.0
PEER_STOP_SECONDS = 20.0


class Lease:
    """The writer lease of one workdir, held by process 0 of a training job."""

    def __init__(self, workdir: pathlib.Path, processes: int = 1):
        self.path = pathlib.Path(workdir) / LEASE_FILE
        self._processes = processes
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None
        self._token: str | None = None

    def acquire(self, log: Callable[[str], None]) -> None:
        """Takes the lease, waiting out a holder whose fate cannot be known yet; ConfigError if it lives."""
        first = None
        while True:
            holder = _read(self.path)
            verdict, why = self._verdict(holder)
            if verdict == "unknown" and first is not None and holder["_mtime"] != first["_mtime"]:
                verdict = "live"  # renewed while we watched
            if verdict == "free":
                break
            if verdict == "live":
                raise ConfigError(
                    f"--workdir={self.path.parent} is being written by another training job ({_who(holder)}; "
                    f"{self.path.name} renewed {self._age(holder):.0f}s ago); stop that job or use "
                    "another --workdir")
            if first is None:
                first = holder
                log(f"waiting for the lease {self.path} of {_who(holder)}: {why}")
            time.sleep(1.0)
        self._write()
        self._renewer = threading.Thread(target=self._renew, name="meshlm-lease", daemon=True)
        self._renewer.start()

    def release(self) -> None:
        """Stops renewing and removes the lease (only if it is still ours)."""
        self._stop.set()
        if self._renewer is not None:
            self._renewer.join()
            self._renewer = None
            if (_read(self.path) or {}).get("token") == self._token:
                self.path.unlink(missing_ok=True)

    def _verdict(self, holder: dict | None) -> tuple[str, str]:
        """('free' | 'live' | 'unknown', why we wait when unknown: the holder may be dead, not yet stale)."""
        if holder is None or "pid" not in holder:
            return "free", ""  # no lease, or not one of ours (never half-written: it is renamed into place)
        age = self._age(holder)
        if holder.get("host") == socket.gethostname() and holder.get("boot_id") == _boot_id():
            if holder["pid"] == os.getpid():
                return "free", ""  # an earlier run in this very process
            if _alive(holder["pid"], holder.get("process_start")):
                return "live", ""
            if holder.get("processes", 1) > 1 and age < PEER_STOP_SECONDS:
                return "unknown", (f"that process is gone; its job's other processes stop within "
                                   f"{PEER_STOP_SECONDS:.0f}s of its last renewal ({age:.0f}s ago)")
            return "free", ""
        if age >= STALE_SECONDS:
            return "free", ""
        return "unknown", (f"it ran on another host, so it counts as dead once not renewed for "
                           f"{STALE_SECONDS:.0f}s ({age:.0f}s so far)")

    def _age(self, holder: dict) -> float:
        """Seconds since the holder last renewed, by the filesystem's clock."""
        return max(0.0, _now_on(self.path.parent) - holder["_mtime"])

    def _write(self) -> None:
        self._token = f"{socket.gethostname()}:{os.getpid()}:{time.time_ns()}"
        record = {"token": self._token, "host": socket.gethostname(), "boot_id": _boot_id(), "pid": os.getpid(),
                  "process_start": _process_start(os.getpid()), "processes": self._processes,
                  "started": time.strftime("%Y-%m-%d %H:%M:%S %z")}
        staging = self.path.with_name(f".{self.path.name}.tmp-{os.getpid()}")
        staging.write_text(json.dumps(record), encoding="utf-8")
        os.replace(staging, self.path)

    def _renew(self) -> None:
        """Touches the lease every RENEW_SECONDS: an mtime update needs no free space."""
        while not self._stop.wait(RENEW_SECONDS):
            try:
                os.utime(self.path)
            except OSError:
                pass  # a missed renewal only makes a waiting job wait; the next one may succeed


def remove_partial_saves(directory: pathlib.Path, only_step: int | None = None) -> list[str]:
    """Removes the `*.orbax-checkpoint-tmp*` folders under directory (of one step, if given).

    Call it only with the lease held (every partial save is then dead), or for the step
    whose save this process has just seen fail.
    """
    removed = []
    if directory.is_dir():
        for path in sorted(directory.iterdir()):
            if TMP_MARKER in path.name and (only_step is None or path.name.split(".")[0] == str(only_step)):
                shutil.rmtree(path, ignore_errors=True)
                removed.append(path.name)
    return removed


def _read(path: pathlib.Path) -> dict | None:
    """The lease's JSON plus its mtime, or None when there is none (or it is unreadable junk)."""
    try:
        mtime = path.stat().st_mtime
        record = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {"_mtime": 0.0}  # not JSON: not a lease meshlm wrote
    return {**record, "_mtime": mtime} if isinstance(record, dict) else {"_mtime": mtime}


def _who(holder: dict) -> str:
    return f"pid {holder.get('pid')} on {holder.get('host')}, started {holder.get('started')}"


def _now_on(directory: pathlib.Path) -> float:
    """The filesystem's idea of now: the mtime of a probe file written there (else this host's clock)."""
    probe = directory / f".lease-probe-{os.getpid()}"
    try:
        probe.touch()
        return probe.stat().st_mtime
    except OSError:
        return time.time()
    finally:
        probe.unlink(missing_ok=True)


def _boot_id() -> str:
    try:
        return pathlib.Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def _process_start(pid: int) -> str:
    """The process's start time in clock ticks since boot (Linux), to tell a reused pid apart."""
    try:
        return pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


def _alive(pid: object, start: object) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # running, as another user
    return not start or _process_start(pid) in ("", start)
