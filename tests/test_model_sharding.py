"""Logical names in action: a model built and run on a (2,2,2) mesh equals the unsharded one."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import AxisType, PartitionSpec

from model import BertMLM, ModelConfig

# A small rules table in the style of train/'s; every name the model uses must appear.
RULES = (
    ("vocab", "tensor"), ("embed", "fsdp"), ("heads", "tensor"), ("kv_heads", "tensor"),
    ("head_dim", None), ("mlp", "tensor"), ("transform", "tensor"), ("layers", None),
    ("norm", None), ("act_batch", ("data", "fsdp")), ("act_length", None), ("act_embed", None),
    ("act_heads", "tensor"), ("act_kv_heads", "tensor"), ("act_head_dim", None),
    ("act_mlp", "tensor"), ("act_vocab", "tensor"),
)
CONFIG = ModelConfig(vocab_size=96, max_len=16, hidden=32, num_layers=2, num_heads=4, mlp_dim=64)


def _key(seed: int) -> jax.Array:
    """A PRNG key; rbg compiles several times faster than threefry on XLA:CPU."""
    return jax.random.key(seed, impl="rbg")


def _batch() -> tuple[jax.Array, jax.Array, jax.Array]:
    tokens = jnp.asarray(np.random.default_rng(0).integers(1, 96, (4, 8)), jnp.int32)
    segments = jnp.asarray([[1] * 3 + [2] * 5, [1] * 8, [1] * 6 + [0] * 2, [1, 2, 2, 3, 3, 3, 0, 0]], jnp.int32)
    positions = jnp.asarray([[0, 1, 2, 0, 1, 2, 3, 4], list(range(8)), [0, 1, 2, 3, 4, 5, 0, 0],
                             [0, 0, 1, 0, 1, 2, 0, 0]], jnp.int32)
    return tokens, segments, positions


def _init() -> nnx.State:
    """Parameters from seed 0, born sharded when a mesh and rules are active."""
    return nnx.state(BertMLM(CONFIG, rngs=nnx.Rngs(_key(0))), nnx.Param)


def _forward(graphdef: nnx.GraphDef, params: nnx.State) -> jax.Array:
    return nnx.merge(graphdef, params)(*_batch())


def test_sharded_forward_equals_unsharded():
    graphdef, plain_params = nnx.split(BertMLM(CONFIG, rngs=nnx.Rngs(_key(0))), nnx.Param)
    expected = jax.jit(_forward, static_argnums=0)(graphdef, plain_params)
    mesh = jax.make_mesh((2, 2, 2), ("data", "fsdp", "tensor"), axis_types=(AxisType.Auto,) * 3)
    with jax.set_mesh(mesh), nnx.logical_axis_rules(RULES):
        params = jax.jit(_init)()
        logits = jax.jit(_forward, static_argnums=0)(graphdef, params)
    word = params["embeddings"]["word"]["embedding"][...]
    up = params["layers"]["mlp"]["up"]["kernel"][...]
    assert word.sharding.spec == PartitionSpec("tensor", "fsdp")
    assert up.sharding.spec == PartitionSpec(None, "fsdp", "tensor")
    assert word.addressable_shards[0].data.shape == (96 // 2, 32 // 2)
    assert logits.sharding.spec == PartitionSpec(("data", "fsdp"), None, "tensor")
    np.testing.assert_allclose(logits, expected, atol=1e-5)
    for plain, sharded in zip(jax.tree.leaves(plain_params), jax.tree.leaves(params)):
        np.testing.assert_allclose(sharded, plain, rtol=1e-6)  # fused vs eager: last bit only


def test_missing_rule_is_named_before_any_device_work():
    mesh = jax.make_mesh((2, 2, 2), ("data", "fsdp", "tensor"), axis_types=(AxisType.Auto,) * 3)
    without_norm = tuple(rule for rule in RULES if rule[0] != "norm")
    with jax.set_mesh(mesh), nnx.logical_axis_rules(without_norm):
        with pytest.raises(ValueError, match=r"\['norm'\] have no rule"):
            nnx.eval_shape(lambda: BertMLM(CONFIG, rngs=nnx.Rngs(_key(0))))
