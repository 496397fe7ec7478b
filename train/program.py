"""Shared plumbing of the absl entry points: config flags, workdir checks, one-line errors."""

from __future__ import annotations

import errno
import logging as pylogging
import os
import pathlib
import sys
import tempfile
import traceback
from typing import Callable, Sequence

from absl import app, flags, logging

from data import remote
from train import distributed, peers
from train.config import Config, ConfigError, load_config

_OVERRIDE_PREFIX = "--config."

# Flags every entry point shares, defined once so that several entry points can be
# imported into one process (tests) without absl's duplicate-flag error.
WORKDIR = flags.DEFINE_string("workdir", None, "The run's directory: tokenizer, data, checkpoints and metrics.")
CONFIG = flags.DEFINE_string("config", None, "Config file with get_config(); override fields as --config.a.b=value.")
STEP = flags.DEFINE_integer("step", None, "Checkpoint step to read; the latest by default.")
TEXT = flags.DEFINE_multi_string("text", [], "Input text (fill-mask: with [MASK]s; predict: to classify); repeatable.")
DTYPE = flags.DEFINE_string("dtype", "float32", "Weights dtype. decode: float32 | bfloat16 | int8; export: "
                            "float32 | bfloat16, and int8 for --format=jax.")
SEED = flags.DEFINE_integer("seed", 0, "Random seed: sampling (decode), the held-out sentences drawn (fill_mask).")
INIT_FROM = flags.DEFINE_string("init_from", None, "Fine-tuning: the pretrained workdir (or one made by import_hf) "
                                "whose latest checkpoint gives the starting weights.")


def split_overrides(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """Separates `--config.a.b=value` overrides from the flags absl parses."""
    rest, overrides = [], []
    for arg in argv:
        if arg.startswith(_OVERRIDE_PREFIX):
            overrides.append(arg[len(_OVERRIDE_PREFIX):])
        else:
            rest.append(arg)
    return rest, overrides


_overrides: list[str] = []
_VERDICT_SECONDS = 10.0  # how long an unexpected error of a multi-process job waits for the watchdog


def parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parser with --config.* overrides set aside for `config_from_flags`."""
    rest, overrides = split_overrides(argv)
    _overrides[:] = overrides
    try:
        return flags.FLAGS(rest)
    except flags.Error as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


def config_from_flags(config_path: str) -> Config:
    return load_config(config_path, _overrides)


def writable_workdir(path: str) -> remote.AnyPath:
    """Creates the workdir if needed and proves it is writable, before any device work.

    A bucket URL (`gs://bucket/run`) is a workdir too: an epath.Path (data/remote.py),
    proven writable by writing and deleting a probe object.
    """
    if not path:
        raise ConfigError("--workdir is required: a directory for checkpoints, metrics and the tokenizer")
    if remote.is_url(path):
        return _writable_bucket_folder(path)
    workdir = pathlib.Path(path)
    try:
        workdir.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=workdir, prefix=".write-check-"):
            pass
    except OSError as e:
        raise ConfigError(f"--workdir={path} is not a writable directory ({e.strerror or e})") from None
    return workdir


def _writable_bucket_folder(path: str) -> remote.AnyPath:
    if not path.startswith(_URL_SCHEMES):
        raise ConfigError(f"--workdir={path}: accepted URLs start with {' or '.join(_URL_SCHEMES)} "
                          "(or give a local directory)")
    workdir = remote.as_path(path.rstrip("/"))
    probe = workdir / f".write-check-{os.getpid()}"
    try:  # no mkdir: folders are implicit in a bucket, and gcsfs would create a missing bucket
        probe.write_text("meshlm")
        probe.unlink()
    except FileNotFoundError:  # gcsfs's answer to a write into a bucket that does not exist
        bucket = path.split("://", 1)[1].split("/", 1)[0]
        raise ConfigError(f"--workdir={path}: bucket {bucket} not found (or not visible to this host's "
                          f"credentials); create it (gcloud storage buckets create gs://{bucket}) or check "
                          "the name") from None
    except Exception as e:  # gcsfs and google-auth raise many kinds: all mean "cannot write here"
        raise ConfigError(f"--workdir={path} is not writable ({type(e).__name__}: "
                          f"{str(e).strip().splitlines()[0][:200] if str(e).strip() else 'no detail'}); check "
                          "the bucket name and this host's credentials (gcloud auth application-default "
                          "login, or the TPU VM's service account)") from None
    return workdir


_URL_SCHEMES = ("gs://",)  # what Orbax/TensorStore write directly; others could follow


def run(main: Callable[[list[str]], None]) -> None:
    """app.run with user errors printed as one line (exit 2); --debug shows the traceback."""

    def guarded(argv: list[str]) -> None:
        # Orbax and JAX log progress at INFO through absl; keep stdout for meshlm's lines.
        logging.set_verbosity(logging.DEBUG if flags.FLAGS.debug else logging.WARNING)
        if not flags.FLAGS.debug:
            _quiet_background_writers()
        try:
            if len(argv) > 1:  # every command takes flags only
                raise ConfigError(f"unexpected arguments {argv[1:]}; flags take the form --name=value")
            distributed.initialize(distributed.plan(
                _COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value),
                relay=not flags.FLAGS.debug)  # before any JAX work
            main(argv)
        except (ConfigError, OSError, ValueError) as e:
            peers.leave(ok=False)
            if flags.FLAGS.debug:
                _reraise(2)
            hint = "" if isinstance(e, ConfigError) else " (rerun with --debug for the traceback)"
            if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
                hint = "; free some space and rerun the same command to resume" + hint
            print(f"error: {e}{hint}", file=sys.stderr)
            _exit(2)
        except SystemExit as e:
            peers.leave(ok=not e.code)
            if e.code:
                _exit(e.code if isinstance(e.code, int) else 1)
            raise
        except KeyboardInterrupt:
            peers.leave(ok=False)
            _reraise(130)
        except BaseException:
            peers.wait_for_verdict(_VERDICT_SECONDS)  # a peer's death surfaces here as a gloo error first
            peers.leave(ok=False)
            _reraise(1)
        peers.leave(ok=True)

    app.run(guarded, flags_parser=parse_flags)


def _reraise(code: int) -> None:
    """Re-raises the error being handled; in a multi-process job prints it and exits (see _exit)."""
    if not peers.active():
        raise  # noqa: PLE0704 (called from an except block)
    traceback.print_exc()
    _exit(code)


def _exit(code: int) -> None:
    """Ends a failed process; one of a multi-process job skips the exit handlers.

    JAX's exit handler waits at a shutdown barrier for every process of the job, and the
    others are stuck in a step that needs this one: the barrier would hold this process for
    minutes. The others are told (peers.leave) and stop by themselves.
    """
    if not peers.active():
        sys.exit(code)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _quiet_background_writers() -> None:
    """Keeps the tracebacks of Orbax's background writers off the console (shown under --debug).

    A failed asynchronous save (a full disk) makes Orbax log the error with a traceback from
    each writer thread (and asyncio, for a writer task nobody awaited), and TensorStore's late
    completions then report "Event loop is closed" (through sys.unraisablehook) for the event
    loop Orbax already closed. The failure itself
    reaches the main thread, which reports it in one line (train/checkpoints/manager.py).
    """
    logging.get_absl_handler().addFilter(lambda record: not background_writer_error(record))
    previous_unraisable = sys.unraisablehook

    def unraisablehook(unraisable) -> None:  # TensorStore reports its callbacks' errors this way
        value = unraisable.exc_value
        if isinstance(value, RuntimeError) and str(value) == "Event loop is closed" \
                and _from_asyncio(unraisable.exc_traceback):
            logging.debug("late TensorStore completion after a failed save: %s", value)
            return
        previous_unraisable(unraisable)

    sys.unraisablehook = unraisablehook


_ORBAX = f"{os.sep}orbax{os.sep}"


def background_writer_error(record: pylogging.LogRecord) -> bool:
    """An error Orbax's background writers log: from Orbax's own code, or asyncio's "Task exception
    was never retrieved" for one of their tasks (logged whenever the garbage collector meets it)."""
    if record.levelno < pylogging.ERROR:
        return False
    return _ORBAX in record.pathname or (record.name == "asyncio" and _ORBAX in record.getMessage())


def _from_asyncio(traceback) -> bool:
    """True when the innermost frame of a traceback is in asyncio (the closed loop's check)."""
    while traceback is not None and traceback.tb_next is not None:
        traceback = traceback.tb_next
    return traceback is not None and f"{os.sep}asyncio{os.sep}" in traceback.tb_frame.f_code.co_filename


flags.DEFINE_bool("debug", False, "Show full tracebacks for user errors.")
# Multi-process jobs (see train/distributed.py); SLURM and TPU pods need none of these.
_COORDINATOR = flags.DEFINE_string("coordinator", "", "HOST:PORT of process 0, for a multi-process job.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", 0, "Processes in the job (0: from the environment).")
_PROCESS_ID = flags.DEFINE_integer("process_id", -1, "This process's index (-1: from the environment).")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
