"""One of two processes that make a train state on a shared 8-device mesh and save a checkpoint.

Run by tests/test_restore_multiprocess.py as
`python -m tests.multiprocess_checkpoint_worker PORT PROCESS_ID WORKDIR`. Process 0 also
writes the full state as arrays.npz (gathered from both processes) for the comparison.
"""

import os
import sys

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"  # before JAX loads
os.environ["JAX_PLATFORMS"] = "cpu"

import jax  # noqa: E402


def main(port: str, process_id: str, workdir: str) -> None:
    jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}", num_processes=2,
                               process_id=int(process_id))
    import numpy as np
    from jax.experimental import multihost_utils

    from train.checkpoints.manager import Checkpoints
    from train.mesh import make_mesh
    from train.optimizer import make_optimizer
    from train.state import init_state, state_layout
    from tests.train_fixtures import tiny_config

    assert jax.process_count() == 2 and jax.device_count() == 8
    config = tiny_config()
    tx, _ = make_optimizer(config.optim, config.train.steps)
    mesh = make_mesh((2, 2, 2))
    layout = state_layout(config.model, tx, mesh)
    state = init_state(config.model, tx, layout, mesh, seed=0)  # each process holds half the shards
    checkpoints = Checkpoints(workdir)
    checkpoints.save(1, state, {"processes": 2})
    checkpoints.close()
    full = multihost_utils.process_allgather(state, tiled=True)
    if jax.process_index() == 0:
        leaves = jax.tree_util.tree_leaves_with_path(full)
        np.savez(os.path.join(workdir, "arrays.npz"),
                 **{jax.tree_util.keystr(path): np.asarray(x) for path, x in leaves})
    multihost_utils.sync_global_devices("done")


if __name__ == "__main__":
    main(*sys.argv[1:])
