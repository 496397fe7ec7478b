"""A checkpoint saved by 2 processes (4 CPU devices each, one 8-device mesh) restores in 1 process."""

import os
import pathlib
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from train.checkpoints.manager import Checkpoints
from train.mesh import make_mesh
from train.optimizer import make_optimizer
from train.state import state_layout

from tests.train_fixtures import tiny_config

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_save_one_process_restores(tmp_path):
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    workers = [subprocess.Popen([sys.executable, "-m", "tests.multiprocess_checkpoint_worker", str(port), str(i),
                                 str(tmp_path)], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True) for i in range(2)]
    try:
        outputs = [w.communicate(timeout=400)[0] for w in workers]
    finally:
        for w in workers:
            if w.poll() is None:
                w.kill()
    assert [w.returncode for w in workers] == [0, 0], "\n".join(outputs)[-3000:]
    expected = np.load(tmp_path / "arrays.npz", allow_pickle=False)

    config = tiny_config()
    tx, _ = make_optimizer(config.optim, config.train.steps)
    for shape in ((1, 1, 1), (1, 2, 2)):
        layout = state_layout(config.model, tx, make_mesh(shape))
        checkpoints = Checkpoints(tmp_path, use_async=False)
        state, meta = checkpoints.restore(1, layout.abstract)
        checkpoints.close()
        assert meta == {"processes": 2}
        leaves = jax.tree_util.tree_leaves_with_path(state)
        assert sorted(jax.tree_util.keystr(p) for p, _ in leaves) == sorted(expected.files)
        for path, x in leaves:
            np.testing.assert_array_equal(np.asarray(x), expected[jax.tree_util.keystr(path)])
