"""Train (or resume) a model: python -m train.main --config=configs/bert_tiny.py --workdir=DIR."""

from __future__ import annotations

from absl import flags

from train import program

_CONFIG = program.CONFIG
_WORKDIR = program.WORKDIR
_DRY_RUN = flags.DEFINE_bool("dry_run", False, "Compile the train step for the config's mesh on simulated CPU "
                             "devices and print its per-device memory; no data, no training.")


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise program.ConfigError(f"unexpected arguments {argv[1:]}; flags take the form --name=value")
    if not _CONFIG.value:
        raise program.ConfigError("--config is required, e.g. --config=configs/bert_tiny.py")
    config = program.config_from_flags(_CONFIG.value)
    if _DRY_RUN.value:
        from train.preflight import dry_run

        dry_run(config)
        return
    workdir = program.writable_workdir(_WORKDIR.value)

    from train.loop import train  # JAX starts here, after every check of the user's input

    train(config, workdir)


if __name__ == "__main__":
    program.run(main)
