"""MLM masking on device, as a pure function of a key: free, reproducible, never a resume problem."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass(frozen=True)
class MaskingSpec:
    """What may be masked and how: BERT's 15% with 80% [MASK], 10% random, 10% kept."""

    mask_id: int
    vocab_size: int
    special_ids: tuple[int, ...]  # never chosen, never drawn as random replacements
    probability: float = 0.15
    mask_ratio: float = 0.8
    random_ratio: float = 0.1
    word_start_table: np.ndarray | None = None  # bool [vocab]; set for whole-word masking
    # At most this many chosen tokens per row (the first ones), so the vocabulary
    # projection runs on a fixed number of positions instead of every token; None: no cap.
    max_predictions: int | None = None


def mask_tokens(key: jax.Array, tokens_BL: jax.Array, spec: MaskingSpec):
    """Returns (inputs_BL, targets_BL, weights_BL): corrupted inputs, originals, 1.0 where chosen."""
    choose_key, action_key, random_key = jax.random.split(key, 3)
    special_V = np.zeros(spec.vocab_size, bool)
    special_V[list(spec.special_ids)] = True
    eligible_BL = ~jnp.asarray(special_V)[tokens_BL]

    draw_BL = jax.random.uniform(choose_key, tokens_BL.shape)
    if spec.word_start_table is not None:
        # Every piece of a word shares the draw of the word's first piece.
        draw_BL = _share_within_words(draw_BL, tokens_BL, spec.word_start_table, special_V)
    chosen_BL = eligible_BL & (draw_BL < spec.probability)
    if spec.max_predictions is not None:
        chosen_BL &= jnp.cumsum(chosen_BL, axis=1) <= spec.max_predictions

    action_BL = jax.random.uniform(action_key, tokens_BL.shape)
    # Replacements are drawn uniformly from the ordinary (non-special) ids.
    ordinary = np.flatnonzero(~special_V).astype(np.int32)
    random_BL = jnp.asarray(ordinary)[jax.random.randint(random_key, tokens_BL.shape, 0, ordinary.size)]
    replaced_BL = jnp.where(action_BL < spec.mask_ratio, spec.mask_id,
                            jnp.where(action_BL < spec.mask_ratio + spec.random_ratio, random_BL, tokens_BL))
    inputs_BL = jnp.where(chosen_BL, replaced_BL, tokens_BL)
    return inputs_BL, tokens_BL, chosen_BL.astype(jnp.float32)


def _share_within_words(draw_BL: jax.Array, tokens_BL: jax.Array, word_start_V: np.ndarray,
                        special_V: np.ndarray) -> jax.Array:
    """Gives each token the draw of the first token of its word."""
    special_BL = jnp.asarray(special_V)[tokens_BL]
    starts_BL = jnp.asarray(word_start_V)[tokens_BL] | special_BL
    # A token right after a special token (e.g. [CLS]) starts a word even without a "▁".
    after_special_BL = jnp.pad(special_BL[:, :-1], ((0, 0), (1, 0)), constant_values=True)
    positions_BL = jnp.broadcast_to(jnp.arange(tokens_BL.shape[1]), tokens_BL.shape)
    start_index_BL = jax.lax.cummax(jnp.where(starts_BL | after_special_BL, positions_BL, 0), axis=1)
    return jnp.take_along_axis(draw_BL, start_index_BL, axis=1)


def prediction_budget(seq_len: int, probability: float) -> int:
    """Per-row cap on predictions: the expected count plus ~3 standard deviations.

    Rows rarely exceed it (well under 1% of chosen tokens are dropped at 15% of 128), and
    the vocabulary projection then costs ~1/5 of the dense one.
    """
    mean = seq_len * probability
    return min(seq_len, int(np.ceil(mean + 3 * np.sqrt(mean * (1 - probability)) + 1)))


def budget_for_mesh(budget: int | None, mesh_shape: dict[str, int]) -> int | None:
    """The prediction budget, or None (project every position) where XLA mis-partitions it.

    With data, fsdp and tensor all above 1, XLA (jax 0.10.2, CPU) computes the loss right
    but the gradients of the gathered head wrong (off by up to 100%), whether the gather is
    a sort, a take or a one-hot matmul; every other mesh shape checked is exact.
    tests/test_train_step.py compares each mesh with one device.
    """
    return None if all(mesh_shape.get(axis, 1) > 1 for axis in ("data", "fsdp", "tensor")) else budget


def gather_predictions(weights_BL: jax.Array, budget: int, hidden_BLD: jax.Array,
                       targets_BL: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """The hidden states, targets and weights of the chosen positions, packed into [B, budget].

    The k-th chosen token of a row goes to slot k; unused slots get weight 0. Selection is
    a one-hot matmul rather than a sort and a gather: it is cheap beside the layers
    (B*L*K*D multiply-adds), and XLA partitions it correctly on every mesh, where the
    sort-and-gather form produced wrong gradients with the batch split over two axes.
    """
    chosen_BL = weights_BL > 0
    slot_BL = jnp.cumsum(chosen_BL, axis=1) - 1
    select_BLK = jax.nn.one_hot(jnp.where(chosen_BL, slot_BL, -1), budget, dtype=hidden_BLD.dtype)
    hidden_BKD = jnp.einsum("blk,bld->bkd", select_BLK, hidden_BLD)
    targets_BK = jnp.einsum("blk,bl->bk", select_BLK.astype(jnp.int32), targets_BL)
    weights_BK = jnp.sum(select_BLK.astype(jnp.float32), axis=1)
    return hidden_BKD, targets_BK, weights_BK
