"""Masked-LM loss and accuracy as sums, so that they average correctly over any batch split."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def mlm_sums(logits_BLV: jax.Array, targets_BL: jax.Array, weights_BL: jax.Array) -> dict[str, jax.Array]:
    """Cross-entropy and correct predictions summed over the weighted (masked) positions."""
    logits_BLV = logits_BLV.astype(jnp.float32)
    log_z_BL = jax.nn.logsumexp(logits_BLV, axis=-1)
    target_logit_BL = jnp.take_along_axis(logits_BLV, targets_BL[..., None], axis=-1)[..., 0]
    correct_BL = (jnp.argmax(logits_BLV, axis=-1) == targets_BL).astype(jnp.float32)
    return {
        "loss_sum": jnp.sum((log_z_BL - target_logit_BL) * weights_BL),
        "correct": jnp.sum(correct_BL * weights_BL),
        "count": jnp.sum(weights_BL),
    }
