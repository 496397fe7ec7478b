"""Folders that may live in a bucket (`gs://bucket/run`): one path type for both, and local mirrors.

`as_path(s)` is a `pathlib.Path` for a local folder (so everything local behaves exactly as
before) and an `etils.epath.Path` for a URL: the same `/`, `exists`, `read_text`,
`write_text`, `iterdir`, `mkdir` and `unlink`, backed by fsspec (gcsfs for `gs://`), which is
what Orbax uses for its own files. What a bucket cannot do the helpers here do instead:
object writes are atomic (no staging rename), a folder "moves" by copy and delete, and a
file's time is the object's update time.

What must be a local file (memory-mapped packed rows, a sentencepiece model handed to the
C++ library, a token store's shards) is kept in a local mirror of the URL folder under the
cache (`$MESHLM_CACHE/remote/<name>-<hash of the URL>/`), the way MaxText and Levanter keep
derived data beside, not in, the bucket.

Credentials are the storage clients' own (a TPU VM's service account through the metadata
server, or `gcloud auth application-default login`); tests point them at an emulator with
STORAGE_EMULATOR_HOST (tests/gcs_emulator.py).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import pathlib
import shutil
import tempfile
from typing import Iterator, Union

from etils import epath

URL_MARK = "://"
# Listings of a bucket change under us (TensorStore writes checkpoints beside gcsfs, other
# hosts write too): gcsfs must ask the bucket each time rather than reuse a cached listing.
_FSSPEC_DEFAULTS = {"use_listings_cache": False}

AnyPath = Union[pathlib.Path, epath.Path]


def is_url(path: object) -> bool:
    """True for `scheme://...` paths (gs://, and any other fsspec knows)."""
    return URL_MARK in os.fspath(path) if isinstance(path, (str, os.PathLike)) else False


def as_path(path: str | os.PathLike) -> AnyPath:
    """A pathlib.Path for a local path, an epath.Path for a URL."""
    if is_url(path):
        _configure_fsspec()
        return epath.Path(os.fspath(path))
    return pathlib.Path(path)


def absolute(path: str | os.PathLike) -> AnyPath:
    """The absolute form of a local path; a URL as it is."""
    path = as_path(path)
    return path if is_url(path) else path.absolute()


def mtime(path: AnyPath) -> float:
    """A file's modification time: the object's update time in a bucket."""
    if is_url(path):
        return float(path.stat().mtime)
    return path.stat().st_mtime


def write_atomic(path: AnyPath, data: bytes) -> None:
    """Writes a whole file so that no reader sees half of it (an object upload is atomic already)."""
    if is_url(path):
        path.write_bytes(data)
        return
    staging = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    staging.write_bytes(data)
    os.replace(staging, path)


def move_tree(source: AnyPath, target: AnyPath) -> None:
    """Moves a folder (a rename on disk; copy, then delete, in a bucket)."""
    if not is_url(source):
        os.rename(source, target)
        return
    # Copy, then delete: gcsfs's mv first tries the objects.move API, which only
    # hierarchical-namespace buckets have, retrying its refusal for a while.
    fs = filesystem(source)
    fs.copy(os.fspath(source).rstrip("/") + "/", os.fspath(target).rstrip("/") + "/", recursive=True)
    fs.rm(os.fspath(source), recursive=True)


def remove_tree(path: AnyPath) -> None:
    """Deletes a folder and what is in it; no error when it is already gone."""
    if not is_url(path):
        shutil.rmtree(path, ignore_errors=True)
        return
    try:
        filesystem(path).rm(os.fspath(path), recursive=True)
    except FileNotFoundError:
        pass


def tree_bytes(path: AnyPath) -> int:
    """Bytes of the files under a folder (0 when there is none)."""
    if is_url(path):
        try:
            return int(filesystem(path).du(os.fspath(path)))
        except FileNotFoundError:
            return 0
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                pass  # removed while we walked
    return total


def filesystem(path: AnyPath):
    """The fsspec filesystem of a URL (gcsfs for gs://)."""
    import fsspec

    _configure_fsspec()
    return fsspec.core.url_to_fs(os.fspath(path))[0]


def local_mirror(url: str | os.PathLike, cache_dir: str | os.PathLike | None = None) -> pathlib.Path:
    """The local folder that stands in for a URL folder: its caches and downloaded files."""
    text = os.fspath(url).rstrip("/")
    name = text.rsplit("/", 1)[-1] or "root"
    key = hashlib.blake2b(text.encode(), digest_size=8).hexdigest()
    root = pathlib.Path(cache_dir) if cache_dir else default_cache_root()
    return root / "remote" / f"{name}-{key}"


def default_cache_root() -> pathlib.Path:
    """$MESHLM_CACHE, else ~/.cache/meshlm (data/builtin_corpus.py's default too)."""
    return pathlib.Path(os.environ.get("MESHLM_CACHE", pathlib.Path.home() / ".cache" / "meshlm"))


def download(source: AnyPath, target: pathlib.Path) -> pathlib.Path:
    """Copies one file to a local path, atomically; returns target."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, staging = tempfile.mkstemp(prefix=f".{target.name}.tmp-", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as out, source.open("rb") as f:
            shutil.copyfileobj(f, out, 1 << 20)
        os.replace(staging, target)
    finally:
        if os.path.exists(staging):
            os.unlink(staging)
    return target


def upload(source: pathlib.Path, target: AnyPath) -> None:
    """Copies one local file to a path (local or URL) as one atomic write."""
    if is_url(target):
        with open(source, "rb") as f, target.open("wb") as out:
            shutil.copyfileobj(f, out, 1 << 20)
    else:
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)


def download_tree(source: AnyPath, target: pathlib.Path, last: str = "") -> pathlib.Path:
    """Copies a URL folder to a new local folder (renamed into place once whole); `last` is copied last."""
    if target.is_dir():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = pathlib.Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        base = os.fspath(source).rstrip("/")
        files = sorted(filesystem(source).find(base), key=lambda f: f.rsplit("/", 1)[-1] == last)
        prefix = base.split(URL_MARK, 1)[-1] + "/"
        for name in files:
            relative = name.split(URL_MARK, 1)[-1][len(prefix):]
            if relative:
                download(source / relative, staging / relative)
        try:
            os.rename(staging, target)
        except OSError:
            if not target.is_dir():  # else another process of this host got there first
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def upload_tree(source: pathlib.Path, target: AnyPath) -> None:
    """Copies a local folder's files into a folder (local or URL), keeping their relative paths."""
    for root, _, files in os.walk(source):
        for name in sorted(files):
            local = pathlib.Path(root) / name
            upload(local, target / local.relative_to(source).as_posix())


def local_folder(path: str | os.PathLike) -> pathlib.Path:
    """A folder to read with local-only libraries: itself, or a URL folder downloaded afresh."""
    if not is_url(path):
        return pathlib.Path(path)
    mirror = local_mirror(path)
    if not as_path(path).is_dir():
        raise FileNotFoundError(f"{os.fspath(path)} does not exist (or holds no files)")
    remove_tree(mirror)
    return download_tree(as_path(path), mirror)


@contextlib.contextmanager
def staged_folder(target: str | os.PathLike) -> Iterator[pathlib.Path]:
    """A local folder to write into; for a URL target a fresh one, uploaded when the block succeeds."""
    if not is_url(target):
        yield pathlib.Path(target)
        return
    staging = local_mirror(target)
    remove_tree(staging)
    staging.mkdir(parents=True)
    yield staging
    upload_tree(staging, as_path(target))


def _configure_fsspec() -> None:
    """gcsfs without listing caches (set once, before the first filesystem is made)."""
    import fsspec.config

    for protocol in ("gs", "gcs"):
        options = fsspec.config.conf.setdefault(protocol, {})
        for key, value in _FSSPEC_DEFAULTS.items():
            options.setdefault(key, value)
