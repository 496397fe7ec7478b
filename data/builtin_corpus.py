"""The built-in English corpus: docstrings of the installed standard library and packages.

It is made at run time from source files (parsed with `ast`, never imported), so a demo
needs no download, and it is deterministic for one install: roots and files are walked in
sorted order. The result is cached under a key of the Python version and the versions of
the corpus distributions, one document per line, with about 2% of documents held out for validation (data/documents.py).
"""

import dataclasses
import hashlib
import importlib.metadata
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from collections.abc import Iterator

from data import docstrings
from data.documents import DataError, is_validation
from data.integrity import file_sha256

# Bump when the extraction or filtering changes, so old caches are not reused.
CORPUS_VERSION = 2
# meshlm's core dependencies: their docstrings, and those of everything they require,
# join the standard library's. Extras (pytest, torch) are not followed, so installing
# them changes neither the corpus nor its cache key.
CORPUS_ROOT_DISTRIBUTIONS = ("absl-py", "flax", "jax", "numpy", "optax", "orbax-checkpoint",
                             "sentencepiece", "tensorboardX", "tensorflow-datasets", "tqdm")
MAX_FILE_BYTES = 1_000_000
# Below this cap a build reads files in-process, since it stops early anyway.
_PARALLEL_MIN_BYTES = 2_000_000
_SKIP_DIRS = {"test", "tests", "idle_test", "__pycache__", "site-packages"}
# Workers run isolated (-I) and import data.docstrings from this checkout, whatever the cwd.
_PACKAGE_ROOT = str(pathlib.Path(__file__).resolve().parents[1])
_WORKER_CODE = ("import sys; sys.path.insert(0, sys.argv[1]); "
                "from data.docstrings import run_worker; run_worker(*sys.argv[2:])")


@dataclasses.dataclass(frozen=True)
class CorpusFiles:
    """The train and validation files of a corpus, one document per line."""

    train: pathlib.Path
    validation: pathlib.Path
    train_docs: int
    validation_docs: int
    train_bytes: int
    validation_bytes: int

    def describe(self) -> str:
        """One line saying how big the corpus is and where it lives, for logs."""
        return (f"built-in corpus: {_megabytes(self.train_bytes)} MB train "
                f"({self.train_docs:,} docs), {_megabytes(self.validation_bytes)} MB validation "
                f"({self.validation_docs:,} docs) at {self.train.parent}")


def _megabytes(num_bytes: int) -> str:
    """Sizes in MB with two significant-ish digits: 6.1, 0.12."""
    megabytes = num_bytes / 1e6
    return f"{megabytes:.1f}" if megabytes >= 1 else f"{megabytes:.2f}"


def default_cache_dir() -> pathlib.Path:
    """Where built corpora are cached: $MESHLM_CACHE, else ~/.cache/meshlm."""
    return pathlib.Path(os.environ.get("MESHLM_CACHE", pathlib.Path.home() / ".cache" / "meshlm"))


def builtin_corpus(cache_dir: str | os.PathLike, max_bytes: int | None = None) -> CorpusFiles:
    """Builds (or reuses from cache_dir) the docstring corpus of this Python install."""
    if max_bytes is not None and max_bytes <= 0:
        raise ValueError(f"max_bytes must be a positive number of bytes or None, got {max_bytes}")
    cache_dir = pathlib.Path(cache_dir)
    final = cache_dir / f"builtin-{_cache_key(max_bytes)}"
    if not (final / "info.json").is_file():
        cache_dir.mkdir(parents=True, exist_ok=True)
        staging = pathlib.Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=cache_dir))
        try:
            _write_corpus(staging, max_bytes)
            _publish(staging, final)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return _load_files(final)


def read_documents(path: str | os.PathLike) -> list[str]:
    """The documents of a one-document-per-line text file, skipping empty lines.

    Bytes that are not UTF-8 never stop a run: they become U+FFFD and the lines that had
    them are counted in one warning on stderr.
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no corpus file at {path}: expected a UTF-8 text file, "
                                "one document per line")
    docs, replaced = [], 0
    with open(path, encoding="utf-8", errors="surrogateescape") as f:
        for line in f:
            if not line.strip():
                continue
            line = line.rstrip("\n")
            if _UNDECODABLE.search(line):
                line = _UNDECODABLE.sub("\ufffd", line)
                replaced += 1
            docs.append(line)
    if replaced:
        print(f"warning: {path}: {replaced} of {len(docs)} documents had bytes that are not "
              "UTF-8; replaced them with U+FFFD", file=sys.stderr)
    return docs


_UNDECODABLE = re.compile("[\udc80-\udcff]")  # how surrogateescape carries an undecodable byte


def _cache_key(max_bytes: int | None) -> str:
    """A short hash of everything that decides the corpus contents."""
    dists = sorted(corpus_distributions().items())
    identity = {"python": sys.version, "dists": dists, "max_bytes": max_bytes,
                "version": CORPUS_VERSION}
    return hashlib.blake2b(json.dumps(identity).encode(), digest_size=8).hexdigest()


def _publish(staging: pathlib.Path, final: pathlib.Path) -> None:
    """Renames a finished build into place; a concurrent build that won first is kept."""
    try:
        os.rename(staging, final)
    except OSError:
        if not (final / "info.json").is_file():
            raise


def _load_files(directory: pathlib.Path) -> CorpusFiles:
    """The CorpusFiles recorded in a finished build's info.json, checked against its sha256."""
    info = json.loads((directory / "info.json").read_text(encoding="utf-8"))
    for split, recorded in info.get("sha256", {}).items():  # builds before hashes have none
        path = directory / f"{split}.txt"
        if not path.is_file() or file_sha256(path) != recorded:
            raise DataError(f"{path} is damaged or missing: it differs from the sha256 recorded in "
                            f"{directory / 'info.json'} when it was built; delete {directory} to "
                            "build the corpus again")
    return CorpusFiles(train=directory / "train.txt", validation=directory / "validation.txt",
                       train_docs=info["train_docs"], validation_docs=info["validation_docs"],
                       train_bytes=info["train_bytes"],
                       validation_bytes=info["validation_bytes"])


def _write_corpus(directory: pathlib.Path, max_bytes: int | None) -> None:
    """Writes train.txt, validation.txt and info.json for one build into directory."""
    counts = {"train_docs": 0, "validation_docs": 0, "train_bytes": 0, "validation_bytes": 0}
    with open(directory / "train.txt", "w", encoding="utf-8") as train, \
            open(directory / "validation.txt", "w", encoding="utf-8") as validation, \
            tempfile.TemporaryDirectory(dir=directory) as scratch:
        for doc in _unique_documents(pathlib.Path(scratch), max_bytes):
            split = "validation" if is_validation(doc) else "train"
            (validation if split == "validation" else train).write(doc + "\n")
            counts[f"{split}_docs"] += 1
            counts[f"{split}_bytes"] += len(doc.encode()) + 1
    if counts["train_docs"] == 0:
        raise ValueError(f"the built-in corpus came out empty (max_bytes={max_bytes}); "
                         "accepted: None or a cap of at least a few KB")
    info = dict(counts, version=CORPUS_VERSION, max_bytes=max_bytes, python=sys.version,
                sha256={split: file_sha256(directory / f"{split}.txt") for split in ("train", "validation")})
    (directory / "info.json").write_text(json.dumps(info, indent=2), encoding="utf-8")


def _unique_documents(scratch: pathlib.Path, max_bytes: int | None) -> Iterator[str]:
    """Documents in walk order without exact duplicates, stopping before max_bytes."""
    seen: set[bytes] = set()
    total = 0
    paths = source_files()
    for file_docs in _documents_per_file(paths, scratch, max_bytes):
        for doc in file_docs:
            digest = hashlib.blake2b(doc.encode(), digest_size=16).digest()
            if digest in seen:
                continue
            seen.add(digest)
            total += len(doc.encode()) + 1
            if max_bytes is not None and total > max_bytes:
                return
            yield doc


def _normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def corpus_distributions() -> dict[str, str]:
    """{distribution: version} of CORPUS_ROOT_DISTRIBUTIONS and all they require (no extras)."""
    found: dict[str, str] = {}
    pending = list(CORPUS_ROOT_DISTRIBUTIONS)
    while pending:
        name = _normalized(pending.pop())
        if name in found:
            continue
        try:
            dist = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            continue  # an optional platform dependency that is not installed here
        found[name] = dist.version
        pending.extend(re.split(r"[\s;<>=!~\[(]", r, maxsplit=1)[0]
                       for r in dist.requires or [] if "extra ==" not in r)
    return found


def source_files() -> list[str]:
    """The .py files of the standard library, then of the corpus distributions, in sorted order."""
    paths = sysconfig.get_paths()
    wanted = set(corpus_distributions())
    packages = sorted(top for top, dists in importlib.metadata.packages_distributions().items()
                      if "/" not in top and any(_normalized(d) in wanted for d in dists))
    site_dirs = sorted({paths["purelib"], paths["platlib"]})
    roots = [paths["stdlib"]] + [os.path.join(site, top) for top in packages for site in site_dirs]
    files = []
    for root in roots:
        if os.path.isfile(root + ".py"):  # a top-level module rather than a package
            files.append(root + ".py")
        for directory, subdirs, names in os.walk(root):
            subdirs[:] = sorted(d for d in subdirs if _keep_dir(d))
            files.extend(os.path.join(directory, n) for n in sorted(names) if _keep_file(n))
    return [f for f in files if _small_enough(f)]


def _keep_dir(name: str) -> bool:
    """Skips tests, caches, metadata and (inside the stdlib) the nested site-packages."""
    return name not in _SKIP_DIRS and not name.endswith((".dist-info", ".egg-info"))


def _keep_file(name: str) -> bool:
    """Python sources other than test modules."""
    return (name.endswith(".py") and not name.startswith("test_")
            and not name.endswith("_test.py") and "\n" not in name)


def _small_enough(path: str) -> bool:
    """Skips huge (usually generated) sources and unreadable entries."""
    try:
        return os.path.getsize(path) <= MAX_FILE_BYTES
    except OSError:
        return False


def _documents_per_file(paths: list[str], scratch: pathlib.Path,
                        max_bytes: int | None) -> Iterator[list[str]]:
    """Each file's documents in order: in-process for small caps, else in worker processes."""
    workers = min(os.cpu_count() or 1, 8)
    if workers == 1 or (max_bytes is not None and max_bytes <= _PARALLEL_MIN_BYTES):
        yield from (docstrings.file_documents(p) for p in paths)
    else:
        yield from _parallel_documents(paths, scratch, workers)


def _parallel_documents(paths: list[str], scratch: pathlib.Path,
                        workers: int) -> Iterator[list[str]]:
    """Runs docstring workers in subprocesses over stripes of paths, merged in order."""
    list_path = scratch / "files.txt"
    list_path.write_text("\n".join(paths), encoding="utf-8")
    outs = [scratch / f"worker-{k}.jsonl" for k in range(workers)]
    _run_workers(list_path, outs, scratch)
    files = [open(out, encoding="utf-8") for out in outs]
    try:
        for i in range(len(paths)):
            yield json.loads(files[i % workers].readline())
    finally:
        for f in files:
            f.close()


def _run_workers(list_path: pathlib.Path, outs: list[pathlib.Path],
                 scratch: pathlib.Path) -> None:
    """Starts one worker per output file and waits for all; none outlives an interruption."""
    procs, logs = [], [scratch / f"worker-{k}.log" for k in range(len(outs))]
    try:
        for k, out in enumerate(outs):
            with open(logs[k], "wb") as log:
                procs.append(subprocess.Popen(
                    [sys.executable, "-I", "-c", _WORKER_CODE, _PACKAGE_ROOT, str(list_path),
                     str(k), str(len(outs)), str(out)], stdout=subprocess.DEVNULL, stderr=log))
        codes = [proc.wait() for proc in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    for k, code in enumerate(codes):
        if code != 0:
            raise RuntimeError(f"corpus worker {k} failed (exit {code}): "
                               f"{logs[k].read_text(errors='replace')[-2000:]}")
