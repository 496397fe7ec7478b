"""Train (or resume) a model: python -m train.main --config=configs/bert_tiny.py --workdir=DIR.

Without --config, a workdir that has a config.json (a run, or a model import_hf brought in)
trains on with it: `python -m train.main --workdir=DIR --config.train.steps=N`.
"""

from __future__ import annotations


from absl import flags

from data import remote
from train import program

_CONFIG = program.CONFIG
_WORKDIR = program.WORKDIR
_DRY_RUN = flags.DEFINE_bool("dry_run", False, "Compile the train step for the config's mesh on simulated CPU "
                             "devices and print its per-device memory; no data, no training.")


def main(argv: list[str]) -> None:
    config_path = _CONFIG.value or _workdir_config(_WORKDIR.value)
    if not config_path:
        raise program.ConfigError("--config is required, e.g. --config=configs/bert_tiny.py (or a --workdir "
                                  "holding a config.json, to train on with it)")
    config = program.config_from_flags(config_path)
    if _DRY_RUN.value:
        from train.preflight import dry_run

        dry_run(config)
        return
    workdir = program.writable_workdir(_WORKDIR.value)

    from train.loop import train  # JAX starts here, after every check of the user's input

    train(config, workdir)


def _workdir_config(workdir: str | None) -> str | None:
    """workdir/config.json when there is one."""
    path = remote.as_path(workdir) / "config.json" if workdir else None
    return str(path) if path is not None and path.is_file() else None


if __name__ == "__main__":
    program.run(main)
