"""Masked-LM and next-token loss and accuracy as sums, so that they average correctly over any batch split."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def mlm_sums(logits_BLV: jax.Array, targets_BL: jax.Array, weights_BL: jax.Array) -> dict[str, jax.Array]:
    """Cross-entropy and correct predictions summed over the weighted (masked) positions."""
    logits_BLV = logits_BLV.astype(jnp.float32)
    log_z_BL = jax.nn.logsumexp(logits_BLV, axis=-1)
    # A one-hot product rather than a gather: its gradient stays an elementwise fusion
    # instead of a scatter into a [B, L, V] buffer.
    one_hot_BLV = jax.nn.one_hot(targets_BL, logits_BLV.shape[-1], dtype=logits_BLV.dtype)
    target_logit_BL = jnp.sum(logits_BLV * one_hot_BLV, axis=-1)
    # The target is the prediction when its logit is the maximum: a plain max reduce,
    # several times cheaper on CPU than argmax's (value, index) reduce over the vocabulary.
    correct_BL = (target_logit_BL >= jnp.max(logits_BLV, axis=-1)).astype(jnp.float32)
    return {
        "loss_sum": jnp.sum((log_z_BL - target_logit_BL) * weights_BL),
        "correct": jnp.sum(correct_BL * weights_BL),
        "count": jnp.sum(weights_BL),
    }


def next_token_targets(tokens_BL: jax.Array, segment_ids_BL: jax.Array,
                       loss_mask_BL: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    """Targets (the following token) and float weights for causal LM over packed rows.

    A position counts only when the next token is in the same, non-padding segment, so
    nothing is predicted across a document boundary and padding is never a target. With
    `loss_mask_BL` (aligned with the tokens: 1 where a token is to be learned, e.g. a
    response's in supervised fine-tuning) only the marked tokens are targets.
    """
    targets_BL = jnp.concatenate([tokens_BL[:, 1:], jnp.zeros_like(tokens_BL[:, :1])], axis=1)
    next_segment_BL = jnp.concatenate([segment_ids_BL[:, 1:], jnp.zeros_like(segment_ids_BL[:, :1])], axis=1)
    weights_BL = (segment_ids_BL > 0) & (next_segment_BL == segment_ids_BL)
    if loss_mask_BL is not None:
        weights_BL = weights_BL & jnp.concatenate([loss_mask_BL[:, 1:] > 0, jnp.zeros_like(weights_BL[:, :1])], axis=1)
    return targets_BL, weights_BL.astype(jnp.float32)
