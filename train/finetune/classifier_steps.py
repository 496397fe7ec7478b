"""The classifier's model factory, optimizer and jitted train/eval steps for fine-tuning."""

from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh

from model.classifier import BertClassifier
from model.config import ModelConfig
from train.config import OptimConfig
from train.mesh import batch_shardings, replicated
from train.steps import in_mesh_context
from train.optimizer import make_optimizer
from train.state import StateLayout, TrainState
from train.config import TaskConfig

Batch = dict[str, jax.Array]
INPUT_KEYS = ("tokens", "token_types", "segment_ids", "positions")
HEAD_PARAMS = ("pooler", "classifier")  # the rest (embeddings, layers) is the pretrained body
_FINETUNE_STREAM = 2  # a key stream of its own, apart from pretraining's masking streams


def classifier_factory(model_cfg: ModelConfig, num_labels: int, task: TaskConfig) -> Callable[[int], nnx.Module]:
    """A function of an init seed that builds the classifier (for state_layout / init_state)."""
    return lambda seed: BertClassifier(model_cfg, num_labels, pooling=task.pooling,
                                       classifier_dropout=task.classifier_dropout, rngs=nnx.Rngs(seed))


def finetune_optimizer(cfg: OptimConfig, total_steps: int,
                       body_ratio: float = 1.0) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """pretraining's AdamW; with body_ratio < 1 the encoder's rate is that fraction of the head's."""
    tx, schedule = make_optimizer(cfg, total_steps)
    if body_ratio == 1.0:
        return tx, schedule
    return optax.chain(tx, scale_body_updates(body_ratio)), schedule


def scale_body_updates(ratio: float) -> optax.GradientTransformation:
    """Multiplies the encoder's updates by `ratio`: AdamW's update is linear in its rate.

    Stateless, so the optimizer state keeps pretraining's structure (optax.multi_transform
    would put masked placeholders in it that the sharding code cannot map).
    """

    def update(updates: Any, state: optax.EmptyState, params: Any = None) -> tuple[Any, optax.EmptyState]:
        del params
        return {name: subtree if name in HEAD_PARAMS else jax.tree.map(lambda u: u * ratio, subtree)
                for name, subtree in updates.items()}, state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def _logits(graphdef: Any, params: Any, batch: Batch, dropout_key: jax.Array | None) -> jax.Array:
    model = nnx.merge(graphdef, params)
    return model(batch["tokens"], batch["segment_ids"], batch["positions"],
                 token_types=batch["token_types"], dropout_key=dropout_key)


def _nll(logits_BC: jax.Array, labels_B: jax.Array) -> jax.Array:
    return -jnp.take_along_axis(jax.nn.log_softmax(logits_BC), labels_B[:, None], axis=1)[:, 0]


def train_step(state: TrainState, batch: Batch, *, graphdef: Any, tx: optax.GradientTransformation,
               schedule: optax.Schedule, seed: int) -> tuple[TrainState, dict]:
    """One optimizer step on the mean cross-entropy of the batch's labels."""
    step = state["step"]
    key = jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), _FINETUNE_STREAM), step)

    def loss_fn(params):
        logits_BC = _logits(graphdef, params, batch, key)
        return _nll(logits_BC, batch["labels"]).mean(), logits_BC

    (loss, logits_BC), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    metrics = {
        "loss": loss,
        "accuracy": jnp.mean(jnp.argmax(logits_BC, axis=-1) == batch["labels"]),
        "grad_norm": optax.global_norm(grads),
        "learning_rate": schedule(step),
    }
    return {"step": step + 1, "params": params, "opt_state": opt_state}, metrics


def eval_step(params: Any, batch: Batch, *, graphdef: Any) -> dict[str, jax.Array]:
    """Deterministic class logits and per-row losses of one batch."""
    logits_BC = _logits(graphdef, params, batch, None)
    return {"logits": logits_BC, "nll": _nll(logits_BC, batch["labels"])}


def predict_step(params: Any, batch: Batch, *, graphdef: Any) -> jax.Array:
    """Class probabilities [B, C] of unlabelled rows."""
    return jax.nn.softmax(_logits(graphdef, params, batch, None), axis=-1)


def compile_steps(layout: StateLayout, mesh: Mesh, **train_kwargs) -> tuple[Callable, Callable]:
    """(train_step, eval_step) under jax.jit with the state's shardings; training donates the state."""
    keys = INPUT_KEYS + ("labels",)
    train = jax.jit(functools.partial(train_step, graphdef=layout.graphdef, **train_kwargs),
                    in_shardings=(layout.shardings, batch_shardings(mesh, keys)),
                    out_shardings=(layout.shardings, replicated(mesh)), donate_argnums=0)
    evaluate = jax.jit(functools.partial(eval_step, graphdef=layout.graphdef),
                       in_shardings=(layout.shardings["params"], batch_shardings(mesh, keys)),
                       out_shardings=replicated(mesh))
    return in_mesh_context(train, mesh), in_mesh_context(evaluate, mesh)


def compile_predict(layout: StateLayout, mesh: Mesh) -> Callable[[Any, Batch], jax.Array]:
    """predict_step under jax.jit, probabilities replicated for the host to read."""
    jitted = jax.jit(functools.partial(predict_step, graphdef=layout.graphdef),
                     in_shardings=(layout.shardings["params"], batch_shardings(mesh, INPUT_KEYS)),
                     out_shardings=replicated(mesh))
    return in_mesh_context(jitted, mesh)
