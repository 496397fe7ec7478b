"""Train (or resume) a model: python -m train.main --config=configs/bert_tiny.py --workdir=DIR."""

from __future__ import annotations

from absl import flags

from train import cli

_CONFIG = cli.CONFIG
_WORKDIR = cli.WORKDIR
_DRY_RUN = flags.DEFINE_bool("dry_run", False, "Compile the train step for the config's mesh on simulated CPU "
                             "devices and print its per-device memory; no data, no training.")


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise cli.ConfigError(f"unexpected arguments {argv[1:]}; flags take the form --name=value")
    if not _CONFIG.value:
        raise cli.ConfigError("--config is required, e.g. --config=configs/bert_tiny.py")
    config = cli.config_from_flags(_CONFIG.value)
    if _DRY_RUN.value:
        from train.compile import dry_run

        dry_run(config)
        return
    workdir = cli.writable_workdir(_WORKDIR.value)

    from train.loop import train  # JAX starts here, after every check of the user's input

    train(config, workdir)


if __name__ == "__main__":
    cli.run(main)
