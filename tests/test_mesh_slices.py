"""The dcn mesh axis: data parallel over TPU slices, laid out by the devices' slice_index.

CPU devices have no slice_index; here the 8 simulated devices are given one (ids 0-3: slice
0, 4-7: slice 1), as a 2-slice job's TPUs carry it, and the mesh and a train step are checked
on them: slices are outermost, the batch splits over dcn, parameters are whole on each
slice, and the losses equal one device's.
"""

import jax
import numpy as np
import pytest

from train.config import ConfigError
from train.masking import budget_for_mesh
from train.mesh import BATCH_AXES, DEVICE_ORDER, MESH_AXES, make_mesh, one_slice

from tests.test_train_step import BUDGET, _losses, _setup
from tests.train_fixtures import tiny_config


@pytest.fixture
def two_slices(monkeypatch):
    """Each CPU device reports slice id // 4, as the TPUs of a 2-slice job report theirs."""
    monkeypatch.setattr(type(jax.devices()[0]), "slice_index", property(lambda device: device.id // 4),
                        raising=False)


def test_slices_are_outermost_and_split_the_batch(two_slices):
    mesh = make_mesh((1, 2, 2, 1, 2))
    assert mesh.axis_names == DEVICE_ORDER and DEVICE_ORDER[0] == "dcn" and BATCH_AXES[0] == "dcn"
    assert dict(mesh.shape) == {"dcn": 2, "data": 1, "fsdp": 2, "tensor": 2, "sequence": 1}
    for index in range(2):
        assert {device.slice_index for device in mesh.devices[index].flat} == {index}
    config = tiny_config()
    _, layout, state, _ = _setup(config, (1, 2, 2, 1, 2))
    word = state["params"]["embeddings"]["word"]["embedding"]
    assert "dcn" not in jax.tree.leaves(tuple(word.sharding.spec))  # replicated across slices
    # Each slice holds the whole table, split over its own fsdp and tensor axes.
    assert word.addressable_shards[0].data.shape == (config.model.vocab_size // 2, config.model.hidden // 2)


@pytest.mark.slow
def test_a_two_slice_step_equals_one_device(two_slices):
    config = tiny_config()
    shape = (1, 2, 2, 1, 2)
    budget = budget_for_mesh(BUDGET, dict(zip(MESH_AXES, shape)))
    single, _ = _losses(config, (1, 1, 1), 3, devices=jax.devices()[:1], budget=budget)
    sliced, _ = _losses(config, shape, 3, budget=budget)
    np.testing.assert_allclose(sliced, single, rtol=1e-5)


def test_dcn_needs_a_job_on_that_many_slices(monkeypatch):
    with pytest.raises(ConfigError, match=r"mesh dcn=2 spreads the batch over 2 TPU slices, but this job's devices "
                                          r"carry no slice index .* --num_slices=2"):
        make_mesh((1, 2, 2, 1, 2))
    monkeypatch.setattr(type(jax.devices()[0]), "slice_index", property(lambda device: device.id // 2),
                        raising=False)
    with pytest.raises(ConfigError, match="mesh dcn=2 but this job runs on 4 TPU slices; accepted: dcn=4"):
        make_mesh((1, 2, 2, 1, 2))
    assert one_slice((1, 2, 2, 1, 2)) == (2, 2, 2, 1, 1)  # what --dry_run compiles on simulated devices
