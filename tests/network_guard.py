"""A socket guard for offline tests: any connection or name lookup beyond this machine fails and is logged.

`guards(log_path)` gives the patches (apply them with pytest's monkeypatch in-process);
`install(log_path)` applies them for good. For a subprocess,
`sitecustomize_dir(folder, log_path)` writes a sitecustomize.py that installs it at start-up;
put the folder first on the child's PYTHONPATH.
"""

import os
import pathlib
import socket

OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
_LOCAL_HOSTS = {"localhost", "127.0.0.1", "::1", "0.0.0.0", "", None}


def _local(address) -> bool:
    if isinstance(address, (str, bytes)):  # AF_UNIX paths
        return True
    host = address[0] if isinstance(address, tuple) and address else None
    return host in _LOCAL_HOSTS or (isinstance(host, str) and host.startswith("127."))


def guards(log_path: str) -> list[tuple[object, str, object]]:
    """(owner, attribute, replacement) patches that refuse non-local connect()/getaddrinfo(), logging each try."""

    def refuse(what: str) -> None:
        import traceback
        with open(log_path, "a", encoding="utf-8") as log:
            log.write(what + "\n")
            log.write("".join(traceback.format_stack(limit=30)) + "\n")
        raise OSError(f"network access blocked by the test guard: {what}")

    connect, connect_ex, getaddrinfo = socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo

    def guarded_connect(self, address):
        if not _local(address):
            refuse(f"connect {address!r}")
        return connect(self, address)

    def guarded_connect_ex(self, address):
        if not _local(address):
            refuse(f"connect_ex {address!r}")
        return connect_ex(self, address)

    def guarded_getaddrinfo(host, *args, **kwargs):
        if not _local((host,)):
            refuse(f"getaddrinfo {host!r}")
        return getaddrinfo(host, *args, **kwargs)

    return [(socket.socket, "connect", guarded_connect), (socket.socket, "connect_ex", guarded_connect_ex),
            (socket, "getaddrinfo", guarded_getaddrinfo)]


def install(log_path: str) -> None:
    """Applies `guards` to this process for good (a subprocess's sitecustomize)."""
    for owner, name, replacement in guards(log_path):
        setattr(owner, name, replacement)


def sitecustomize_dir(folder: pathlib.Path, log_path: pathlib.Path) -> pathlib.Path:
    """A folder whose sitecustomize.py installs the guard in any Python started with it on PYTHONPATH."""
    folder.mkdir(parents=True, exist_ok=True)
    here = pathlib.Path(__file__).resolve().parent
    (folder / "sitecustomize.py").write_text(
        "import importlib.util\n"
        f"spec = importlib.util.spec_from_file_location('network_guard', {str(here / 'network_guard.py')!r})\n"
        "guard = importlib.util.module_from_spec(spec)\n"
        "spec.loader.exec_module(guard)\n"
        f"guard.install({str(log_path)!r})\n", encoding="utf-8")
    return folder


def log_lines(log_path: pathlib.Path) -> list[str]:
    return log_path.read_text(encoding="utf-8").splitlines() if os.path.exists(log_path) else []


def offline_hubs(monkeypatch) -> None:
    """The hubs' offline switches in this process: datasets and huggingface_hub read them at import."""
    import datasets
    import huggingface_hub

    for key, value in OFFLINE.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
