"""A local Google Cloud Storage for tests: gcp-storage-emulator on 127.0.0.1, and a trap for anything else.

`running(tmp_path)` starts one helper process holding two listeners on 127.0.0.1:

- the emulator (JSON API, in memory) with the bucket BUCKET;
  It is taught two things real GCS does that TensorStore relies on (see
  `_with_generations`): preconditions on an object's generation (ifGenerationMatch,
  ifGenerationNotMatch) and the x-goog-generation header on downloads;
- a trap: every connection made to it is recorded. The metadata server (GCE_METADATA_HOST,
  GCE_METADATA_ROOT) and the HTTP(S) proxies of every client are pointed at it, so a client
  that would have reached beyond this machine (credentials from 169.254.169.254, any
  internet host) lands here instead, and the test asserts that nothing did.

`Emulator.env` points every storage client at the emulator with explicit test credentials:
gcsfs and google-cloud-storage (STORAGE_EMULATOR_HOST; anonymous), TensorStore's gcs driver
(TENSORSTORE_GCS_HTTP_URL; a fixed bearer token, GOOGLE_AUTH_TOKEN_FOR_TESTING). Python
clients are also watched by tests/network_guard.py (connect() beyond 127.0.0.1 fails);
TensorStore's C++ connections are not Python's, hence the trap.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import pathlib
import socket
import subprocess
import sys
import time
from typing import Iterator

BUCKET = "meshlm-test"
TEST_TOKEN = "meshlm-test-token"


@dataclasses.dataclass
class Emulator:
    port: int
    trap_port: int
    trap_log: pathlib.Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def env(self) -> dict[str, str]:
        """Environment that sends every storage client to the emulator, and everything else to the trap."""
        trap = f"127.0.0.1:{self.trap_port}"
        return {
            "STORAGE_EMULATOR_HOST": self.url,  # gcsfs, google-cloud-storage (then anonymous)
            "FSSPEC_GS_TOKEN": "anon", "FSSPEC_GCS_TOKEN": "anon",  # gcsfs: never look for credentials
            "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",  # its bucket-type probe speaks gRPC+TLS
            "TENSORSTORE_GCS_HTTP_URL": self.url,
            "GOOGLE_AUTH_TOKEN_FOR_TESTING": TEST_TOKEN,  # TensorStore: a fixed token, no credential search
            "GOOGLE_CLOUD_PROJECT": "meshlm-test",
            "GCE_METADATA_HOST": trap, "GCE_METADATA_ROOT": trap, "GCE_METADATA_IP": trap,
            "http_proxy": f"http://{trap}", "https_proxy": f"http://{trap}",
            "HTTP_PROXY": f"http://{trap}", "HTTPS_PROXY": f"http://{trap}",
            "no_proxy": "127.0.0.1,localhost", "NO_PROXY": "127.0.0.1,localhost",
            "GOOGLE_APPLICATION_CREDENTIALS": "", "CLOUDSDK_CONFIG": str(self.trap_log.parent / "gcloud"),
        }

    def trapped(self) -> list[str]:
        """The connections the trap received (each a line: the first bytes the client sent)."""
        return self.trap_log.read_text(encoding="utf-8").splitlines() if self.trap_log.exists() else []


@contextlib.contextmanager
def running(folder: pathlib.Path) -> Iterator[Emulator]:
    """Starts the emulator and the trap in a helper process; stops it on exit."""
    folder.mkdir(parents=True, exist_ok=True)
    ports = folder / "ports"
    ports.unlink(missing_ok=True)  # a helper that ran here before left its ports
    process = subprocess.Popen([sys.executable, __file__, str(ports), str(folder / "trap.log")],
                               stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=open(folder / "emulator.log", "w"))
    try:
        deadline = time.monotonic() + 60
        while not ports.exists():
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the GCS emulator did not start: {(folder / 'emulator.log').read_text()[-2000:]}")
            time.sleep(0.05)
        port, trap_port = (int(p) for p in ports.read_text().split())
        yield Emulator(port, trap_port, folder / "trap.log")
    finally:
        process.stdin.close()  # the helper exits when its stdin closes
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve(ports_file: str, trap_log: str) -> None:
    """The helper process: emulator and trap until stdin closes."""
    import http.server
    import logging
    import socketserver
    import threading

    from gcp_storage_emulator import server as emulator_server
    from gcp_storage_emulator.server import create_server

    _with_generations(emulator_server)
    # One request at a time, as written; clients open many connections at once (gcsfs's
    # copies, TensorStore's writes): a deep accept queue keeps them waiting, not refused.
    http.server.HTTPServer.request_queue_size = 1024

    logging.getLogger("gcp_storage_emulator").setLevel(logging.CRITICAL)  # TensorStore probes for absent files

    class Trap(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            self.request.settimeout(2)
            try:
                first = self.request.recv(200)
            except OSError:
                first = b""
            with open(trap_log, "a", encoding="utf-8") as log:
                log.write(repr(first) + "\n")

    trap = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Trap)
    threading.Thread(target=trap.serve_forever, daemon=True).start()
    port = _free_port()
    server = create_server("127.0.0.1", port, in_memory=True, default_bucket=BUCKET)
    server.start()
    server._api._httpd.handle_error = lambda request, address: None  # clients that hang up early
    staging = ports_file + ".tmp"
    pathlib.Path(staging).write_text(f"{port} {trap.server_address[1]}")
    os.replace(staging, ports_file)
    sys.stdin.read()
    server.stop()
    trap.shutdown()


def _with_generations(emulator_server) -> None:
    """Wraps the emulator's object handlers with GCS's generation preconditions and headers.

    TensorStore (Orbax's OCDBT manifests) writes with ifGenerationMatch, revalidates its cache
    with ifGenerationNotMatch, and reads an object's generation from x-goog-generation; the
    emulator (2026.7.19) ignores the first two and omits the header.
    """
    from http import HTTPStatus

    from gcp_storage_emulator.exceptions import NotFound

    def generation(storage, bucket: str, name: str) -> str:
        try:
            return str(storage.get_file_obj(bucket, name)["generation"])
        except NotFound:
            return "0"  # GCS's generation of an absent object in preconditions

    def wrap(handler):
        def wrapped(request, response, storage, *args, **kwargs):
            params = request.params or {}
            bucket = params.get("bucket_name")
            name = params.get("object_id") or (request.query.get("name") or [None])[0]
            if bucket and name:
                current = generation(storage, bucket, name)
                match, not_match = request.query.get("ifGenerationMatch"), request.query.get("ifGenerationNotMatch")
                if match and match[0] != current:
                    response.status = HTTPStatus.PRECONDITION_FAILED
                    return
                if not_match and not_match[0] == current and current != "0":
                    response.status = HTTPStatus.NOT_MODIFIED
                    return
            handler(request, response, storage, *args, **kwargs)
            if bucket and name and response.status in (HTTPStatus.OK, HTTPStatus.PARTIAL_CONTENT):
                response["x-goog-generation"] = generation(storage, bucket, name)
                response["x-goog-metageneration"] = "1"
        return wrapped

    for _, handlers in emulator_server.HANDLERS:
        for method in list(handlers):
            handlers[method] = wrap(handlers[method])


if __name__ == "__main__":
    _serve(sys.argv[1], sys.argv[2])
