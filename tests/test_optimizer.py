"""The fused AdamW computes what optax's clip + masked AdamW chain computes, with the same state."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from train.config import OptimConfig
from train.optimizer import fused_adamw, learning_rate_schedule, optax_adamw


@pytest.mark.parametrize("cfg", [OptimConfig(warmup_steps=2, clip_norm=1.0),
                                 OptimConfig(warmup_steps=0, clip_norm=0.0, weight_decay=0.1)])
def test_fused_adamw_equals_optax_chain(cfg):
    schedule = learning_rate_schedule(cfg, 10)
    params = {"dense": {"kernel": jnp.linspace(-1.0, 1.0, 12).reshape(3, 4), "bias": jnp.arange(4.0)},
              "layer_norm": {"scale": jnp.ones(4)}}
    runs = []
    for tx in (fused_adamw(cfg, schedule), optax_adamw(cfg, schedule)):
        p, state = params, tx.init(params)
        for step in range(4):  # step 1's gradients are large enough to be clipped
            grads = jax.tree.map(lambda x: jnp.sin(x * (step + 1)) * (3.0 if step == 1 else 0.1), p)
            updates, state = jax.jit(tx.update)(grads, state, p)
            p = optax.apply_updates(p, updates)
        runs.append((p, state))
    (fused_params, fused_state), (ref_params, ref_state) = runs
    assert jax.tree.structure(fused_state) == jax.tree.structure(ref_state)  # checkpoints interchange
    for got, want in zip(jax.tree.leaves((fused_params, fused_state)), jax.tree.leaves((ref_params, ref_state))):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-6, atol=1e-8)
