"""A checkpoint written on one mesh restores onto any other: 8 -> 4 -> 1 devices, equal values."""

import jax
import numpy as np

from train.checkpoints.manager import Checkpoints
from train.mesh import make_mesh
from train.optimizer import make_optimizer
from train.state import init_state, state_layout

from tests.train_fixtures import tiny_config


def _as_numpy(state):
    return jax.tree.map(np.asarray, state)


def _restore_on(workdir, step, shape, config, tx):
    """Restores `step` onto a mesh of `shape`, checking every leaf lands in the target's sharding."""
    mesh = make_mesh(shape)
    layout = state_layout(config.model, tx, mesh)
    checkpoints = Checkpoints(workdir, use_async=False)
    state, meta = checkpoints.restore(step, layout.abstract)
    checkpoints.close()
    for x, want in zip(jax.tree.leaves(state), jax.tree.leaves(layout.shardings)):
        assert x.sharding.is_equivalent_to(want, x.ndim), (x.sharding, want)
        assert x.sharding.mesh.devices.size == mesh.devices.size
    return state, meta


def _assert_equal(a, b):
    for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=jax.tree_util.keystr(path))


def test_eight_to_four_to_one_devices(tmp_path):
    config = tiny_config()
    tx, _ = make_optimizer(config.optim, config.train.steps)
    mesh8 = make_mesh((2, 2, 2))
    layout8 = state_layout(config.model, tx, mesh8)
    state = init_state(config.model, tx, layout8, mesh8, seed=0)  # random params, sharded 8 ways
    written = _as_numpy(state)
    assert any(len(x.sharding.device_set) == 8 for x in jax.tree.leaves(state))
    checkpoints = Checkpoints(tmp_path)
    checkpoints.save(1, state, {"mesh": [2, 2, 2]})
    checkpoints.close()

    for shape in ((4, 1, 1), (1, 2, 2)):  # two 4-device meshes of different shapes
        on4, meta = _restore_on(tmp_path, 1, shape, config, tx)
        assert meta == {"mesh": [2, 2, 2]}
        _assert_equal(written, on4)
    # 4 -> 1: what the 4-device job saves loads on a single device.
    checkpoints = Checkpoints(tmp_path)
    checkpoints.save(2, on4, {"mesh": [1, 2, 2]})
    checkpoints.close()
    on1, _ = _restore_on(tmp_path, 2, (1, 1, 1), config, tx)
    _assert_equal(written, on1)
