"""List a workdir's checkpoints: python -m train.checkpoints --workdir=DIR.

Reads only files (no device work): see train/checkpoints/listing.py.
"""

from __future__ import annotations

from train import program
from train.checkpoints.listing import format_listing
from train.config import ConfigError


def main(argv: list[str]) -> None:
    workdir = program.WORKDIR.value
    if not workdir:
        raise ConfigError("--workdir is required: the workdir of a training run")
    print(format_listing(workdir))


if __name__ == "__main__":
    program.run(main)
