"""Dropout from a hash of (key, element index): the rate is kept, survivors are rescaled, masks look
independent, and a mask does not depend on how the array is sharded."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec

from model.dropout import dropout


@pytest.mark.parametrize("rate", [0.1, 0.5])
def test_dropout_drops_the_rate_and_rescales_the_rest(rate):
    out = np.asarray(dropout(jnp.ones((1000, 1000)), rate, jax.random.key(0)))
    assert abs((out == 0).mean() - rate) < 0.002
    np.testing.assert_allclose(out[out != 0], 1.0 / (1.0 - rate), rtol=1e-6)
    assert abs(out.mean() - 1.0) < 0.005  # unbiased in expectation


def test_masks_are_independent_across_neighbours_rows_and_keys():
    rate, shape = 0.1, (2000, 1000)
    drop = np.asarray(dropout(jnp.ones(shape), rate, jax.random.key(3)) == 0)
    other_key = np.asarray(dropout(jnp.ones(shape), rate, jax.random.key(4)) == 0)
    for pair in (drop[:, 1:] & drop[:, :-1], drop[1:] & drop[:-1], drop & other_key):
        assert abs(pair.mean() - rate ** 2) < 0.001
    # Per-row and per-column rates scatter like independent draws (no striping).
    assert np.std(drop.mean(axis=1)) < 1.3 * np.sqrt(rate * (1 - rate) / shape[1])
    assert np.std(drop.mean(axis=0)) < 1.3 * np.sqrt(rate * (1 - rate) / shape[0])
    # Leading axes are counted as one row index: [2, 1000, 1000] is not two copies of one mask.
    stacked = np.asarray(dropout(jnp.ones((2, 1000, 1000)), rate, jax.random.key(3)) == 0)
    assert abs((stacked[0] & stacked[1]).mean() - rate ** 2) < 0.001


def test_mask_is_the_same_however_the_array_is_sharded():
    x = jnp.arange(8 * 4 * 16 * 16, dtype=jnp.float32).reshape(8, 4, 16, 16)
    key = jax.random.key(5)
    expected = np.asarray(jax.jit(lambda x, k: dropout(x, 0.3, k))(x, key))
    mesh = jax.make_mesh((2, 4), ("a", "b"), axis_types=(jax.sharding.AxisType.Auto,) * 2)
    for spec in (PartitionSpec("a", "b"), PartitionSpec(None, None, "a", "b"), PartitionSpec(("a", "b"))):
        sharding = NamedSharding(mesh, spec)
        out = jax.jit(lambda x, k: dropout(x, 0.3, k), in_shardings=(sharding, None),
                      out_shardings=sharding)(jax.device_put(x, sharding), key)
        np.testing.assert_array_equal(np.asarray(out), expected)


def test_dropout_is_identity_without_key_or_rate():
    x = jnp.arange(6.0)
    assert dropout(x, 0.1, None) is x and dropout(x, 0.0, jax.random.key(0)) is x
