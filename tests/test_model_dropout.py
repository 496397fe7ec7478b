"""Dropout from 16 random bits per element: the rate is kept and survivors are rescaled."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from model.dropout import dropout


@pytest.mark.parametrize("rate", [0.1, 0.5])
def test_dropout_drops_the_rate_and_rescales_the_rest(rate):
    out = np.asarray(dropout(jnp.ones((1000, 1000)), rate, jax.random.key(0)))
    assert abs((out == 0).mean() - rate) < 0.002
    np.testing.assert_allclose(out[out != 0], 1.0 / (1.0 - rate), rtol=1e-6)
    assert abs(out.mean() - 1.0) < 0.005  # unbiased in expectation


def test_dropout_is_identity_without_key_or_rate():
    x = jnp.arange(6.0)
    assert dropout(x, 0.1, None) is x and dropout(x, 0.0, jax.random.key(0)) is x
