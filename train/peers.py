"""When a process of a multi-process job dies, the others stop at once, each with one line naming it.

JAX alone notices a dead process only when its coordination service misses the process's
heartbeats (after up to 100 s), then aborts every other process with a fatal-error dump;
until then the survivors sit in a collective (gloo on CPU) that can never finish. meshlm
adds a watchdog: every process keeps one idle TCP connection to process 0, whose address
is exchanged through JAX's key-value store. A killed or crashed process's sockets are
closed by its kernel at once, and TCP keepalive probes (answered by kernels, not by
Python, so a busy interpreter is never mistaken for a dead one) notice a host that went
silent within ~11 s. Process 0 tells the others which process died, waits briefly for
them to stop, and stops; each prints one line and exits with status 75 (EX_TEMPFAIL: the
job's restart resumes from the last committed checkpoint).

A process that ends normally says "bye ok" first; one that fails says "bye error" and the
others stop after a short grace (they may be failing the same way, with their own line).
The death of process 0 itself (the coordinator) makes JAX abort the others at once, before
any Python code can run: train/stderr_relay.py turns that dump into the one line.

Protocol, one line each: "hello INDEX PID HOST", "bye ok", "bye error" (process -> 0);
"dead INDEX PID HOST HOW" and "bye ok" (0 -> processes).
"""

from __future__ import annotations

import os
import pathlib
import selectors
import socket
import sys
import threading
import time
from typing import Callable

from train import stderr_relay

EXIT_PEER_DIED = 75
_KEY = "meshlm/peers/address"
_CONNECT_SECONDS = 120.0
_ERROR_GRACE_SECONDS = 3.0  # a peer failed: this process may be about to fail likewise, by itself
_NOTIFY_SECONDS = 3.0  # process 0 waits this long for the others to stop before it stops
_KEEPALIVE = {"TCP_KEEPIDLE": 5, "TCP_KEEPINTVL": 2, "TCP_KEEPCNT": 3}


class _Watch:
    """This process's side of the watchdog; one per process."""

    def __init__(self, index: int, count: int):
        self.index, self.count = index, count
        self.resume_hint: Callable[[], str] = lambda: "rerun the job to resume from the last committed checkpoint"
        self.stopping = threading.Lock()
        self.peer_ended = False  # process 0 said "bye ok" (to processes > 0)
        self.sockets: list[socket.socket] = []
        self.when_alone: list[Callable[[], None]] = []  # process 0: run when every other has stopped
        self.left = False  # this process said bye: it ends with its own status and line

    def stop(self, who: str, what: str) -> None:
        """Prints the one line and ends this process (status 75); the first caller wins."""
        if self.left or not self.stopping.acquire(blocking=False):
            return  # this process is ending anyway: with its own line, or another thread's
        try:
            hint = self.resume_hint()
        except Exception:  # the hint reads the workdir; never let it block the exit
            hint = "rerun the job to resume from the last committed checkpoint"
        sys.stdout.flush()
        stderr_relay.say_verdict(
            f"error: process {who} {what}; stopping process {self.index} too (exit {EXIT_PEER_DIED}); {hint}")
        os._exit(EXIT_PEER_DIED)


_watch: _Watch | None = None


def start(index: int, count: int, coordinator_host: str) -> None:
    """Joins the watchdog of a job of `count` processes; call right after jax.distributed.initialize."""
    global _watch
    from jax._src import distributed  # JAX's key-value store (Orbax uses the same client)

    client = distributed.global_state.client
    _watch = _Watch(index, count)
    try:
        if index == 0:
            listener = socket.create_server(("", 0), family=socket.AF_INET, backlog=count)
            client.key_value_set(_KEY, f"{coordinator_host}:{listener.getsockname()[1]}")
            threading.Thread(target=_serve, args=(_watch, listener), name="meshlm-peers", daemon=True).start()
        else:
            address = client.blocking_key_value_get(_KEY, int(_CONNECT_SECONDS * 1000))
            if address == "none":
                return  # process 0 could not listen and has said so
            host, port = address.rsplit(":", 1)
            conn = socket.create_connection((host, int(port)), timeout=_CONNECT_SECONDS)
            conn.settimeout(None)
            _keepalive(conn)
            conn.sendall(f"hello {index} {os.getpid()} {socket.gethostname()}\n".encode())
            _watch.sockets.append(conn)
            threading.Thread(target=_follow, args=(_watch, conn), name="meshlm-peers", daemon=True).start()
    except Exception as e:  # a firewall between hosts: JAX's heartbeat still stops the job, later
        if index == 0:
            try:
                client.key_value_set(_KEY, "none", allow_overwrite=True)
            except Exception:
                pass
        print(f"warning: the peer watchdog could not start ({type(e).__name__}: {e}); if a process dies, "
              "the others stop only when JAX's heartbeat times out", file=sys.stderr)


def watch_workdir(workdir: pathlib.Path, release: Callable[[], None]) -> None:
    """Lets the stop line name the last committed checkpoint; `release` runs once no peer is left.

    `release` gives the workdir's writer lease back when process 0 stops after every other
    process has (so the job's restart need not wait for the lease to age).
    """
    stderr_relay.tell_workdir(workdir)
    if _watch is not None:
        _watch.resume_hint = lambda: stderr_relay.resume_hint(workdir)
        _watch.when_alone.append(release)


def active() -> bool:
    """True in a process of a multi-process job (the watchdog runs)."""
    return _watch is not None


def leave(ok: bool) -> None:
    """Tells the others this process ends on purpose (ok) or with its own error; call before exiting."""
    if _watch is None:
        return
    _watch.left = True
    for conn in _watch.sockets:
        try:
            conn.sendall(b"bye ok\n" if ok else b"bye error\n")
        except OSError:
            pass


def wait_for_verdict(seconds: float) -> None:
    """Gives the watchdog time to name a dead peer before an error of ours (likely its echo) is shown."""
    if _watch is not None:
        time.sleep(seconds)  # the watchdog ends the process from its thread if a peer died


def _serve(watch: _Watch, listener: socket.socket) -> None:
    """Process 0: accepts every process's connection and watches them all for a close."""
    selector = selectors.DefaultSelector()
    selector.register(listener, selectors.EVENT_READ)
    peers: dict[socket.socket, dict] = {}
    while True:
        for key, _ in selector.select():
            if key.fileobj is listener:
                conn, _ = listener.accept()
                _keepalive(conn)
                selector.register(conn, selectors.EVENT_READ)
                peers[conn] = {"index": "?", "pid": "?", "host": "?", "bye": "", "buffer": b""}
                watch.sockets.append(conn)
                continue
            conn, peer = key.fileobj, peers[key.fileobj]
            data, how = _receive(conn)
            for line in _lines(peer, data):
                if line.startswith("hello "):
                    peer["index"], peer["pid"], peer["host"] = line.split()[1:4]
                elif line.startswith("bye "):
                    peer["bye"] = line.split()[1]
            if peer["bye"] == "error":
                threading.Thread(target=_after_grace, args=(watch, peer, peers), daemon=True).start()
                peer["bye"] = "error-seen"
            if data:
                continue
            selector.unregister(conn)
            conn.close()
            del peers[conn]
            watch.sockets.remove(conn)
            if peer["bye"] == "ok" or peer["bye"] == "error-seen":
                continue
            _announce(watch, peers, peer, how)


def _after_grace(watch: _Watch, peer: dict, peers: dict) -> None:
    """A peer failed with its own error: unless this process ends by itself meanwhile, stop it."""
    time.sleep(_ERROR_GRACE_SECONDS)
    _announce(watch, peers, peer, "stopped with an error (see its output)")


def _announce(watch: _Watch, peers: dict, peer: dict, how: str) -> None:
    """Process 0: tells every other process who died, lets them stop first, then stops."""
    message = f"dead {peer['index']} {peer['pid']} {peer['host']} {how}\n".encode()
    others = [conn for conn, other in list(peers.items()) if other is not peer]
    for conn in others:
        try:
            conn.sendall(message)
        except OSError:
            pass
    deadline = time.monotonic() + _NOTIFY_SECONDS  # they close their end as they exit
    while time.monotonic() < deadline and any(_open(conn) for conn in others):
        time.sleep(0.05)
    if not any(_open(conn) for conn in others):  # nobody else writes now: e.g. free the workdir's lease
        for hook in watch.when_alone:
            try:
                hook()
            except Exception:
                pass  # the stop line matters more
    watch.stop(_who(peer["index"], peer["pid"], peer["host"], watch.count), how)


def _follow(watch: _Watch, conn: socket.socket) -> None:
    """A process > 0: waits for process 0's word, or for its connection to close."""
    state = {"buffer": b""}
    coordinator = f"0 of {watch.count} (the coordinator)"
    while True:
        data, how = _receive(conn)
        for line in _lines(state, data):
            if line.startswith("dead "):
                index, pid, host, what = line.split(" ", 4)[1:]
                watch.stop(_who(index, pid, host, watch.count), what)
                return
            elif line == "bye ok":
                watch.peer_ended = True
            elif line == "bye error":  # this process may be failing likewise: give it the grace first
                stderr_relay.tell_coordinator_failed()
                timer = threading.Timer(_ERROR_GRACE_SECONDS, watch.stop,
                                        (coordinator, "stopped with an error (see its output)"))
                timer.daemon = True  # if this process ends by itself meanwhile, its own line stands
                timer.start()
                return
        if not data:
            if not watch.peer_ended:
                watch.stop(coordinator, how)
            return


def _receive(conn: socket.socket) -> tuple[bytes, str]:
    """(bytes read, b'' at the end) and, at the end, how the connection ended in words."""
    try:
        data = conn.recv(4096)
    except OSError as e:
        return b"", _why(e)
    return data, "died (its connection closed: killed, crashed, or its host went down)"


def _why(error: OSError) -> str:
    if isinstance(error, TimeoutError) or getattr(error, "errno", None) == 110:
        return "stopped answering (its host is down or unreachable: TCP keepalive timed out)"
    return f"died (its connection failed: {error.strerror or error})"


def _lines(state: dict, data: bytes) -> list[str]:
    state["buffer"] += data
    *lines, state["buffer"] = state["buffer"].split(b"\n")
    return [line.decode(errors="replace") for line in lines]


def _open(conn: socket.socket) -> bool:
    """False once the other end has closed the connection."""
    try:
        return conn.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) != b""
    except BlockingIOError:
        return True
    except OSError:
        return False


def _who(index: str, pid: str, host: str, count: int) -> str:
    return f"{index} of {count} (pid {pid} on {host})"


def _keepalive(conn: socket.socket) -> None:
    """Kernel-level liveness probes on an idle connection (Linux names; skipped where absent)."""
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for name, value in _KEEPALIVE.items():
        if hasattr(socket, name):
            conn.setsockopt(socket.IPPROTO_TCP, getattr(socket, name), value)
