"""The jitted train step: a tiny model overfits a batch; sharded equals unsharded (losses, shard
shapes by the rules, FSDP memory); checkpoints round-trip."""

import jax
import numpy as np
import pytest

from train.checkpoints.manager import Checkpoints
from train.config import OptimConfig
from train.masking import budget_for_mesh
from train.mesh import LOGICAL_RULES, MESH_AXES, make_mesh, to_global
from train.optimizer import make_optimizer
from train.state import init_state, state_layout
from train.steps import compile_train_step

from tests.train_fixtures import tiny_batch, tiny_config, tiny_spec


# 0.3 of 14 ordinary tokens a row is ~4 predictions; a budget of 5 caps some rows.
BUDGET = 5


def _setup(config, mesh_shape, devices=None, budget=BUDGET):
    mesh = make_mesh(mesh_shape, devices)
    tx, schedule = make_optimizer(config.optim, config.train.steps)
    layout = state_layout(config.model, tx, mesh)
    state = init_state(config.model, tx, layout, mesh, seed=0)
    step = compile_train_step(layout, mesh, tx=tx, schedule=schedule, spec=tiny_spec(0.3, budget), seed=0)
    return mesh, layout, state, step


def _losses(config, mesh_shape, steps, devices=None, rows=8, budget=BUDGET):
    mesh, _, state, step = _setup(config, mesh_shape, devices, budget)
    batch = tiny_batch(rows)
    losses = []
    for _ in range(steps):
        state, metrics = step(state, to_global(batch, mesh))
        losses.append(float(metrics["loss"]))
    return losses, state


def test_tiny_model_overfits_a_batch():
    config = tiny_config(steps=200)
    config.optim = OptimConfig(learning_rate=3e-3, schedule="constant", warmup_steps=0, weight_decay=0.0)
    # Masks differ every step, so the model must memorize every token of the 4 rows.
    losses, _ = _losses(config, (1, 1, 1), 200, devices=jax.devices()[:1], rows=4)
    assert np.mean(losses[-20:]) < 0.3 * losses[0], losses[::20]


def test_budget_equals_dense_projection_when_no_row_exceeds_it():
    config = tiny_config()
    # A budget as long as the row never drops a prediction: same loss as the dense head.
    dense, _ = _losses(config, (1, 1, 1), 3, devices=jax.devices()[:1], budget=None)
    budgeted, _ = _losses(config, (1, 1, 1), 3, devices=jax.devices()[:1], budget=16)
    np.testing.assert_allclose(budgeted, dense, rtol=1e-5)


@pytest.mark.parametrize("shape", [(8, 1, 1), (1, 8, 1), (1, 4, 2), (2, 2, 2)])
def test_sharded_loss_equals_one_device(shape):
    config = tiny_config()
    budget = budget_for_mesh(BUDGET, dict(zip(MESH_AXES, shape)))  # as the trainer picks it
    single, _ = _losses(config, (1, 1, 1), 5, devices=jax.devices()[:1], budget=budget)
    sharded, _ = _losses(config, shape, 5, budget=budget)
    np.testing.assert_allclose(sharded, single, rtol=1e-5)


def test_params_and_optimizer_state_are_born_sharded():
    config = tiny_config()
    mesh, layout, state, _ = _setup(config, (1, 8, 1))
    word = state["params"]["embeddings"]["word"]["embedding"]
    assert word.sharding == layout.shardings["params"]["embeddings"]["word"]["embedding"]
    assert word.addressable_shards[0].data.shape == (config.model.vocab_size, config.model.hidden // 8)
    mu = jax.tree.leaves(state["opt_state"], is_leaf=lambda x: hasattr(x, "mu"))
    moments = [leaf.mu for leaf in mu if hasattr(leaf, "mu")][0]
    assert moments["embeddings"]["word"]["embedding"].sharding.spec == word.sharding.spec


def test_checkpoint_round_trip_is_bitwise(tmp_path):
    config = tiny_config()
    mesh, layout, state, step = _setup(config, (2, 2, 2))
    state, _ = step(state, to_global(tiny_batch(), mesh))
    checkpoints = Checkpoints(tmp_path, keep=2)
    checkpoints.save(1, state, {"note": "test"})
    checkpoints.wait()
    restored, meta = checkpoints.restore(1, layout.abstract)
    checkpoints.close()
    assert meta == {"note": "test"}
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(state), jax.tree.leaves(restored)):
        assert a.sharding == b.sharding, path
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=str(path))


def _logical_names(config) -> dict[str, tuple]:
    """Each parameter's logical axis names, as the model declares them, by path."""
    from flax import nnx

    from train.state import model_factory

    abstract = nnx.state(nnx.eval_shape(lambda: model_factory(config.model)(0)))
    leaves = jax.tree_util.tree_leaves_with_path(abstract, is_leaf=lambda x: isinstance(x, nnx.Variable))
    return {jax.tree_util.keystr(path): var.get_metadata()["out_sharding"] for path, var in leaves}


@pytest.mark.parametrize("shape", [(8, 1, 1), (1, 8, 1), (1, 4, 2), (2, 2, 2)])
def test_every_parameter_shard_has_the_shape_the_rules_give(shape):
    config = tiny_config()
    mesh, _, state, _ = _setup(config, shape)
    rules, sizes = dict(LOGICAL_RULES), dict(zip(MESH_AXES, shape))
    names = _logical_names(config)
    params = jax.tree_util.tree_leaves_with_path(state["params"])
    assert len(params) == len(names) > 10
    for path, array in params:
        expected = tuple(dim // sizes[rules[name]] if rules.get(name) else dim
                         for dim, name in zip(array.shape, names[jax.tree_util.keystr(path)]))
        assert {s.data.shape for s in array.addressable_shards} == {expected}, jax.tree_util.keystr(path)
    assert any(p.addressable_shards[0].data.shape != p.shape for _, p in params) or shape == (8, 1, 1)


def test_fsdp_over_8_holds_an_eighth_of_params_and_optimizer_state_per_device():
    config = tiny_config()
    # Wide enough that replicated vectors (biases, LayerNorms) are a small share, as in real models.
    config.model.hidden, config.model.mlp_dim, config.model.num_heads = 512, 2048, 8
    config.model.vocab_size = 1024
    _, _, state, _ = _setup(config, (1, 8, 1))
    leaves = jax.tree.leaves({"params": state["params"], "opt_state": state["opt_state"]})
    total = sum(x.nbytes for x in leaves)
    device = jax.devices()[0]
    on_device = sum(s.data.nbytes for x in leaves for s in x.addressable_shards if s.device == device)
    assert on_device <= total / 8 * 1.02, (on_device, total / 8)


def test_bf16_compute_tracks_fp32():
    config = tiny_config(steps=20)
    fp32, _ = _losses(config, (1, 1, 1), 15, devices=jax.devices()[:1])
    config.model.dtype = "bfloat16"  # parameters (and the optimizer) stay float32
    bf16, state = _losses(config, (1, 1, 1), 15, devices=jax.devices()[:1])
    assert {x.dtype for x in jax.tree.leaves(state["params"])} == {np.dtype("float32")}
    assert bf16 != fp32  # bf16 matmuls really ran
    np.testing.assert_allclose(bf16, fp32, rtol=0.03)
    assert bf16[-1] < 0.9 * bf16[0]  # and it learns
