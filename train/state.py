"""The train state, born sharded: parameters and optimizer state are created on the mesh.

The state is a plain pytree `{"step", "params", "opt_state"}` whose params are a pure
dict of arrays (what `nnx.merge` takes back), so checkpoints hold no Flax classes. The
optimizer state covers only the trainable params (train/trainable.py: all of them, or a
LoRA model's adapters).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from model.config import ModelConfig
from model.decoder import LlamaLM
from model.encoder import BertMLM
from train.mesh import replicated, sharding_context
from train.trainable import trainable_part

TrainState = dict[str, Any]


def model_factory(cfg: ModelConfig) -> Callable[[int], nnx.Module]:
    """A function of an init seed that builds the model; one place that picks the class."""
    model_class = LlamaLM if cfg.arch == "llama" else BertMLM
    return lambda seed: model_class(cfg, rngs=nnx.Rngs(seed))


@dataclasses.dataclass(frozen=True)
class StateLayout:
    """The graph of the model and the shape, dtype and sharding of every state leaf."""

    graphdef: Any
    abstract: TrainState  # jax.ShapeDtypeStruct leaves carrying their NamedSharding
    shardings: TrainState

    @property
    def param_count(self) -> int:
        return sum(x.size for x in jax.tree.leaves(self.abstract["params"]))

    @property
    def trainable_count(self) -> int:
        """Parameters the optimizer updates: all, or a LoRA model's adapters."""
        return sum(x.size for x in jax.tree.leaves(trainable_part(self.abstract["params"])))


def param_shardings(model_cfg: ModelConfig, mesh: Mesh,
                    factory: Callable[[int], nnx.Module] | None = None) -> tuple[Any, Any, Any]:
    """(graphdef, abstract params, param shardings) from the model's logical axis names.

    `factory` (a function of an init seed) builds another model than BertMLM, e.g. a classifier.
    """
    factory = factory or model_factory(model_cfg)
    with sharding_context(mesh):
        abstract_model = nnx.eval_shape(lambda: factory(0))
        graphdef, abstract_state = nnx.split(abstract_model)
        shardings = named_shardings(abstract_state, mesh)
    return graphdef, nnx.to_pure_dict(abstract_state), shardings


def named_shardings(state: nnx.State, mesh: Mesh) -> Any:
    """A NamedSharding per variable from its logical names (call inside `sharding_context(mesh)`)."""
    specs = nnx.to_pure_dict(nnx.get_partition_spec(state))
    return jax.tree.map(lambda spec: NamedSharding(mesh, spec), specs, is_leaf=lambda x: isinstance(x, PartitionSpec))


def state_layout(model_cfg: ModelConfig, tx: optax.GradientTransformation, mesh: Mesh,
                 factory: Callable[[int], nnx.Module] | None = None) -> StateLayout:
    """Shapes and shardings of the whole train state, computed without allocating it."""
    graphdef, abstract_params, p_shardings = param_shardings(model_cfg, mesh, factory)
    abstract_opt = jax.eval_shape(tx.init, trainable_part(abstract_params))
    # Optimizer moments shard like their parameters; counts and scalars are replicated.
    opt_shardings = optax.tree_map_params(
        tx, lambda _, sharding: sharding, abstract_opt, trainable_part(p_shardings),
        transform_non_params=lambda _: replicated(mesh))
    shardings = {"step": replicated(mesh), "params": p_shardings, "opt_state": opt_shardings}
    abstract = jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
        {"step": jax.ShapeDtypeStruct((), jnp.int32), "params": abstract_params,
         "opt_state": abstract_opt}, shardings)
    return StateLayout(graphdef, abstract, shardings)


def init_state(model_cfg: ModelConfig, tx: optax.GradientTransformation, layout: StateLayout,
               mesh: Mesh, seed: int, factory: Callable[[int], nnx.Module] | None = None) -> TrainState:
    """Creates parameters and optimizer state directly in their shards: no full host copy."""
    factory = factory or model_factory(model_cfg)

    def init() -> TrainState:
        params = nnx.to_pure_dict(nnx.state(factory(seed)))
        return {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": tx.init(trainable_part(params))}

    with sharding_context(mesh):
        return jax.jit(init, out_shardings=layout.shardings)()
