"""A two-process job in which process BAD stops with a user error while the other waits in a collective.

    BAD=1 ./launch.sh local --processes=2 --module=tests.failing_job_stub
"""

import os

from train import program
from train.config import ConfigError


def main(argv: list[str]) -> None:
    import jax
    from jax.experimental import multihost_utils

    multihost_utils.sync_global_devices("both started")
    if jax.process_index() == int(os.environ["BAD"]):
        raise ConfigError(f"process {jax.process_index()} has a bad input")
    multihost_utils.sync_global_devices("never reached")  # the other process is gone


if __name__ == "__main__":
    program.run(main)
