"""Shared plumbing of the absl entry points: config flags, workdir checks, one-line errors."""

from __future__ import annotations

import os
import pathlib
import sys
import tempfile
from typing import Callable, Sequence

from absl import app, flags, logging

from train import distributed
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


def writable_workdir(path: str) -> pathlib.Path:
    """Creates the workdir if needed and proves it is writable, before any device work."""
    if not path:
        raise ConfigError("--workdir is required: a directory for checkpoints, metrics and the tokenizer")
    if "://" in path:
        raise ConfigError(f"--workdir={path}: URLs are not supported; mount the bucket (e.g. gcsfuse at "
                          "/gcs/BUCKET on every host) and pass the mounted path")
    workdir = pathlib.Path(path)
    try:
        workdir.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=workdir, prefix=".write-check-"):
            pass
    except OSError as e:
        raise ConfigError(f"--workdir={path} is not a writable directory ({e.strerror or e})") from None
    return workdir


def run(main: Callable[[list[str]], None]) -> None:
    """app.run with user errors printed as one line (exit 2); --debug shows the traceback."""

    def guarded(argv: list[str]) -> None:
        # Orbax and JAX log progress at INFO through absl; keep stdout for meshlm's lines.
        logging.set_verbosity(logging.DEBUG if flags.FLAGS.debug else logging.WARNING)
        try:
            distributed.initialize(distributed.plan(
                _COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value))  # before any JAX work
            main(argv)
        except (ConfigError, OSError, ValueError) as e:
            if flags.FLAGS.debug:
                raise
            hint = "" if isinstance(e, ConfigError) else " (rerun with --debug for the traceback)"
            print(f"error: {e}{hint}", file=sys.stderr)
            sys.exit(2)

    app.run(guarded, flags_parser=parse_flags)


flags.DEFINE_bool("debug", False, "Show full tracebacks for user errors.")
# Multi-process jobs (see train/distributed.py); SLURM and TPU pods need none of these.
_COORDINATOR = flags.DEFINE_string("coordinator", "", "HOST:PORT of process 0, for a multi-process job.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", 0, "Processes in the job (0: from the environment).")
_PROCESS_ID = flags.DEFINE_integer("process_id", -1, "This process's index (-1: from the environment).")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
