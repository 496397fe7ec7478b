"""The jitted train and eval steps: pure functions of (state, batch) with explicit shardings."""

from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh

from train.losses import mlm_sums, next_token_targets
from train.masking import MaskingSpec, gather_predictions, mask_tokens
from train.mesh import batch_sharding, batch_shardings, replicated, sharding_context
from train.state import StateLayout, TrainState
from train.trainable import join, split_trainable

Batch = dict[str, jax.Array]
BATCH_KEYS = ("tokens", "segment_ids", "positions")  # plus "loss_mask" in supervised fine-tuning rows

# Key streams derived from the run seed; eval masks never depend on the train step.
_TRAIN_STREAM, _EVAL_STREAM = 0, 1


def _mlm_forward(graphdef: Any, params: Any, batch: Batch, masked: tuple[jax.Array, ...],
                 spec: MaskingSpec, dropout_key: jax.Array | None) -> dict[str, jax.Array]:
    """Runs the model on the masked inputs and returns loss/accuracy sums.

    With a prediction budget the vocabulary projection runs only on the chosen positions.
    """
    inputs_BL, targets_BL, weights_BL = masked
    model = nnx.merge(graphdef, params)
    hidden_BLD = model.encode(inputs_BL, batch["segment_ids"], batch["positions"], dropout_key=dropout_key)
    if spec.max_predictions is not None:
        hidden_BLD, targets_BL, weights_BL = gather_predictions(
            weights_BL, spec.max_predictions, hidden_BLD, targets_BL)
    sums = mlm_sums(model.logits(hidden_BLD), targets_BL, weights_BL)
    sums["tokens"] = jnp.sum(batch["segment_ids"] > 0).astype(jnp.float32)
    return sums


def _causal_forward(graphdef: Any, params: Any, batch: Batch, dropout_key: jax.Array | None) -> dict[str, jax.Array]:
    """Next-token loss/accuracy sums of a decoder; targets never cross a segment boundary.

    A batch with a `loss_mask` (supervised fine-tuning: 1 on response tokens) counts only
    the tokens it marks as targets.
    """
    model = nnx.merge(graphdef, params)
    targets_BL, weights_BL = next_token_targets(batch["tokens"], batch["segment_ids"], batch.get("loss_mask"))
    logits_BLV = model(batch["tokens"], batch["segment_ids"], batch["positions"], dropout_key=dropout_key)
    sums = mlm_sums(logits_BLV, targets_BL, weights_BL)
    sums["tokens"] = jnp.sum(batch["segment_ids"] > 0).astype(jnp.float32)
    return sums


def batch_loss(params: Any, batch: Batch, step: jax.Array, *, graphdef: Any, spec: MaskingSpec | None,
               seed: int) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The mean masked-token (spec) or next-token (spec None) cross-entropy the train step
    differentiates, and its sums; masks and dropout are keyed by (seed, step)."""
    key = jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), _TRAIN_STREAM), step)
    mask_key, dropout_key = jax.random.split(key)
    if spec is None:
        sums = _causal_forward(graphdef, params, batch, dropout_key)
    else:
        masked = mask_tokens(mask_key, batch["tokens"], spec)
        sums = _mlm_forward(graphdef, params, batch, masked, spec, dropout_key)
    return sums["loss_sum"] / jnp.maximum(sums["count"], 1.0), sums


def train_step(state: TrainState, batch: Batch, *, graphdef: Any, tx: optax.GradientTransformation,
               schedule: optax.Schedule, spec: MaskingSpec | None, seed: int,
               skip_nonfinite: bool = False, vocab_size: int | None = None) -> tuple[TrainState, dict]:
    """One AdamW step on `batch_loss`.

    Only the trainable params (train/trainable.py: all, or a LoRA model's adapters) are
    differentiated and updated; `state["opt_state"]` covers them alone.

    `metrics["nonfinite"]` is 1 when the loss or a gradient is not finite; with
    `skip_nonfinite` such an update is dropped (params and optimizer state stay as they
    were) and only the step advances. The updated parameters are not checked here: from
    finite gradients AdamW moves each one by at most a few learning rates, so only an
    absurd rate overflows them, and `params_finite` checks them before every save instead
    (a pass over every parameter each step cost ~4% of a BERT-base step on CPU).
    With `vocab_size`, `metrics["out_of_vocab"]` counts the batch's ids outside [0, vocab_size):
    an embedding lookup of such an id is garbage, and the non-finite message must say so.
    """
    step = state["step"]
    loss_fn = functools.partial(batch_loss, batch=batch, step=step, graphdef=graphdef, spec=spec, seed=seed)
    # Only the trainable params are differentiated and updated (all of them, or a LoRA
    # model's adapters: train/trainable.py); frozen ones pass through untouched.
    trainable, frozen = split_trainable(state["params"])
    (loss, sums), grads = jax.value_and_grad(lambda p: loss_fn(join(p, frozen)), has_aux=True)(trainable)
    updates, opt_state = tx.update(grads, state["opt_state"], trainable)
    new = optax.apply_updates(trainable, updates)
    grad_norm = optax.global_norm(grads)  # also what clipping computes: XLA shares it
    # A non-finite gradient (or one whose square overflows) makes the norm non-finite.
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    if skip_nonfinite:
        new, opt_state = jax.tree.map(lambda new, old: jnp.where(finite, new, old),
                                      (new, opt_state), (trainable, state["opt_state"]))
    params = join(new, frozen)
    metrics = {
        "loss": loss,
        "accuracy": sums["correct"] / jnp.maximum(sums["count"], 1.0),
        "grad_norm": grad_norm,
        "learning_rate": schedule(step),
        "tokens": sums["tokens"],
        "masked": sums["count"],
        "nonfinite": 1.0 - finite.astype(jnp.float32),
    }
    if vocab_size is not None:
        tokens = batch["tokens"]
        metrics["out_of_vocab"] = jnp.sum((tokens < 0) | (tokens >= vocab_size)).astype(jnp.float32)
    return {"step": step + 1, "params": params, "opt_state": opt_state}, metrics


@jax.jit
def params_finite(tree: Any) -> jax.Array:
    """True when every float in `tree` is finite: one pass, run before a checkpoint is saved."""
    leaves = [x for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)]
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))


def eval_step(params: Any, batch: Batch, index: jax.Array, *, graphdef: Any, spec: MaskingSpec | None,
              seed: int, baseline_token: int) -> dict[str, jax.Array]:
    """Sums over one held-out batch, masked by (seed, batch index) so every eval sees the same masks."""
    if spec is None:  # causal LM: every next token of the batch (or of its loss_mask) is a target
        sums = _causal_forward(graphdef, params, batch, None)
        targets_BL, weights_BL = next_token_targets(batch["tokens"], batch["segment_ids"], batch.get("loss_mask"))
        sums["baseline_correct"] = jnp.sum((targets_BL == baseline_token) * weights_BL)
        return sums
    key = jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), _EVAL_STREAM), index)
    masked = mask_tokens(key, batch["tokens"], spec)
    sums = _mlm_forward(graphdef, params, batch, masked, spec, None)
    _, targets_BL, weights_BL = masked
    sums["baseline_correct"] = jnp.sum((targets_BL == baseline_token) * weights_BL)
    return sums


def compile_train_step(layout: StateLayout, mesh: Mesh, **kwargs) -> Callable[[TrainState, Batch], tuple]:
    """`train_step` under jax.jit with the state's shardings, donating the old state.

    Every array of a batch (whatever its keys) has its rows split over data and fsdp.
    """
    jitted = jax.jit(
        functools.partial(train_step, graphdef=layout.graphdef, **kwargs),
        in_shardings=(layout.shardings, batch_sharding(mesh)),
        out_shardings=(layout.shardings, replicated(mesh)),
        donate_argnums=0)
    return in_mesh_context(jitted, mesh)


def compile_eval_step(layout: StateLayout, mesh: Mesh, **kwargs) -> Callable[..., dict]:
    """`eval_step` under jax.jit; reads the params without donating them."""
    jitted = jax.jit(
        functools.partial(eval_step, graphdef=layout.graphdef, **kwargs),
        in_shardings=(layout.shardings["params"], batch_sharding(mesh), replicated(mesh)),
        out_shardings=replicated(mesh))
    return in_mesh_context(jitted, mesh)


def in_mesh_context(fn: Callable, mesh: Mesh) -> Callable:
    """Traces and runs `fn` with the mesh and logical rules active (for activation constraints)."""

    @functools.wraps(fn)
    def wrapped(*args):
        with sharding_context(mesh):
            return fn(*args)

    return wrapped


def compile_forward(layout: StateLayout, mesh: Mesh) -> Callable[[Any, Batch], jax.Array]:
    """Deterministic logits for a batch (fill-mask, evaluation of given text)."""

    def forward(params: Any, batch: Batch) -> jax.Array:
        model = nnx.merge(layout.graphdef, params)
        return model(batch["tokens"], batch["segment_ids"], batch["positions"])

    jitted = jax.jit(forward, in_shardings=(layout.shardings["params"], batch_shardings(mesh, BATCH_KEYS)))
    return in_mesh_context(jitted, mesh)
