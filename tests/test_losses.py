"""MLM sums: cross-entropy and accuracy over the weighted positions only."""

import jax
import jax.numpy as jnp
import numpy as np

from train.losses import mlm_sums


def test_mlm_sums_match_a_direct_computation():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(3, 5, 11)).astype(np.float32)
    targets = rng.integers(0, 11, (3, 5)).astype(np.int32)
    weights = (rng.random((3, 5)) < 0.5).astype(np.float32)
    sums = jax.device_get(mlm_sums(jnp.asarray(logits), jnp.asarray(targets), jnp.asarray(weights)))
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    nll = -np.take_along_axis(np.asarray(log_probs), targets[..., None], axis=-1)[..., 0]
    np.testing.assert_allclose(sums["loss_sum"], (nll * weights).sum(), rtol=1e-5)
    assert sums["correct"] == ((logits.argmax(-1) == targets) * weights).sum()
    assert sums["count"] == weights.sum()
