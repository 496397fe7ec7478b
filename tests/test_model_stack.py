"""The scanned layer stack: equal to applying its blocks one by one or unrolled; remat changes nothing."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from model import BertMLM, ModelConfig


def _key(seed: int) -> jax.Array:
    """A PRNG key; rbg compiles several times faster than threefry on XLA:CPU."""
    return jax.random.key(seed, impl="rbg")


def _config(**overrides) -> ModelConfig:
    sizes = dict(vocab_size=96, max_len=16, hidden=32, num_layers=2, num_heads=4, mlp_dim=64)
    return ModelConfig(**{**sizes, **overrides})


def _batch() -> tuple[jax.Array, jax.Array, jax.Array]:
    tokens = jnp.asarray(np.random.default_rng(0).integers(1, 96, (2, 8)), jnp.int32)
    segments = jnp.asarray([[1, 1, 1, 2, 2, 2, 2, 0], [1, 1, 1, 1, 1, 1, 1, 1]], jnp.int32)
    positions = jnp.asarray([[0, 1, 2, 0, 1, 2, 3, 0], list(range(8))], jnp.int32)
    return tokens, segments, positions


def test_scan_equals_blocks_applied_by_hand():
    model = BertMLM(_config(), rngs=nnx.Rngs(_key(0)))
    tokens, segments, positions = _batch()
    x = model.embeddings(tokens, positions)
    graphdef, stacked = nnx.split(model.layers)
    by_hand = x
    for i in range(2):
        block = nnx.merge(graphdef, jax.tree.map(lambda a, i=i: a[i], stacked))
        by_hand = block(by_hand, segments)
    scanned = model.apply_layers(x, segments)
    np.testing.assert_allclose(scanned, by_hand, atol=1e-6)
    assert not np.allclose(by_hand, x, atol=1e-3)


def _logits_and_grads(**cfg) -> tuple[jax.Array, nnx.State]:
    graphdef, params = nnx.split(BertMLM(_config(**cfg), rngs=nnx.Rngs(_key(0))), nnx.Param)
    def loss(params):
        logits = nnx.merge(graphdef, params, copy=True)(*_batch(), dropout_key=_key(7))
        return jnp.mean(logits ** 2), logits

    return jax.jit(jax.grad(loss, has_aux=True))(params)[::-1]


def _assert_same(a: tuple[jax.Array, nnx.State], b: tuple[jax.Array, nnx.State]) -> None:
    np.testing.assert_allclose(b[0], a[0], atol=1e-6)
    for g, g_other in zip(jax.tree.leaves(a[1]), jax.tree.leaves(b[1])):
        np.testing.assert_allclose(g_other, g, atol=1e-6)
    assert float(jnp.abs(a[1]["layers"]["mlp"]["up"]["kernel"][...]).max()) > 0.0


@pytest.mark.parametrize("remat", ["full", "dots", True])  # True: an older config's bool
def test_remat_gives_equal_outputs_and_gradients(remat):
    _assert_same(_logits_and_grads(remat="none"), _logits_and_grads(remat=remat))


def test_unrolled_layers_equal_the_scan():
    # Same stacked parameters, dropout on: only the way the layers are applied (and the
    # unrolled path's remat) differs.
    _assert_same(_logits_and_grads(remat="none", dropout=0.1),
                 _logits_and_grads(remat="full", dropout=0.1, scan_layers=False))
