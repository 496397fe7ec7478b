"""Attention masks from segment ids, and grouped-query attention's head sharing."""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from model.attention import Attention, attention_mask, cached_attention, dot_product_attention
from model.kv_cache import write_cache


def test_mask_keeps_documents_apart_and_padding_to_itself():
    segments = jnp.asarray([[1, 1, 2, 0]], jnp.int32)
    expected = np.asarray([[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]], bool)
    mask = attention_mask(segments, segments, causal=False)
    assert mask.shape == (1, 1, 4, 4)
    np.testing.assert_array_equal(mask[0, 0], expected)


def test_causal_mask_also_hides_later_keys():
    segments = jnp.asarray([[1, 1, 1, 2, 2]], jnp.int32)
    mask = attention_mask(segments, segments, causal=True)[0, 0]
    expected = np.tril(np.ones((5, 5), bool))
    expected[3:, :3] = False
    np.testing.assert_array_equal(mask, expected)


@jax.jit
def _three_ways(q: jax.Array, k: jax.Array, v: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Grouped (4 query heads on 2 kv heads), with kv repeated, and jax's fused reference."""
    segments = jnp.asarray([[1, 1, 2, 2, 0], [1, 1, 1, 1, 1]], jnp.int32)
    mask = attention_mask(segments, segments)
    k_full, v_full = jnp.repeat(k, 2, axis=2), jnp.repeat(v, 2, axis=2)
    grouped = dot_product_attention(q, k, v, mask)
    full = dot_product_attention(q, k_full, v_full, mask)
    return grouped, full, jax.nn.dot_product_attention(q, k_full, v_full, mask=mask)


def test_grouped_query_attention_equals_repeated_kv_heads():
    rng = np.random.default_rng(0)
    q = rng.normal(size=(2, 5, 4, 8)).astype(np.float32)
    k, v = rng.normal(size=(2, 2, 5, 2, 8)).astype(np.float32)
    grouped, full, reference = _three_ways(q, k, v)
    np.testing.assert_allclose(grouped, full, atol=1e-6)
    np.testing.assert_allclose(full, reference, atol=1e-5)


def test_grouped_causal_attention_module():
    attention = Attention(16, 4, 4, num_kv_heads=2, causal=True, rngs=nnx.Rngs(jax.random.key(0, impl="rbg")))
    names = {path: var.get_metadata()["out_sharding"] for path, var in nnx.to_flat_state(nnx.state(attention))}
    assert names[("key", "kernel")] == ("embed", "kv_heads", "head_dim")
    assert names[("query", "kernel")] == ("embed", "heads", "head_dim")
    x = np.random.default_rng(0).normal(size=(1, 6, 16)).astype(np.float32)
    segments = jnp.ones((1, 6), jnp.int32)
    changed_end = x.copy()
    changed_end[0, 5] += 1.0
    out, out_changed = attention(x, segments), attention(changed_end, segments)
    assert out.shape == (1, 6, 16)
    np.testing.assert_allclose(out_changed[0, :5], out[0, :5], atol=1e-6)  # nothing sees the future
    assert not np.allclose(out_changed[0, 5], out[0, 5], atol=1e-4)


def test_cached_attention_equals_attention_over_the_whole_row():
    """Three new tokens over a cache holding a row's first five (slot 0 is left padding), then the write."""
    rng = np.random.default_rng(0)
    q = rng.normal(size=(2, 8, 4, 8)).astype(np.float32)
    k, v = rng.normal(size=(2, 2, 8, 2, 8)).astype(np.float32)
    segments = jnp.asarray([[0, 1, 1, 1, 1, 1, 1, 1], [1] * 8], jnp.int32)
    full = dot_product_attention(q, k, v, attention_mask(segments, segments, causal=True))
    empty = jnp.zeros((2, 2, 8, 8))
    cache_k, cache_v = write_cache(empty, empty, k[:, :5], v[:, :5], 0)
    visible = (segments[:, :] == 1) & (jnp.arange(8) < 5)  # filled slots of real tokens
    cache_mask = jnp.broadcast_to(visible[:, None], (2, 3, 8))
    out = cached_attention(q[:, 5:], k[:, 5:], v[:, 5:], cache_k, cache_v, cache_mask)
    np.testing.assert_allclose(out, full[:, 5:], atol=1e-5)
    after_k, after_v = write_cache(cache_k, cache_v, k[:, 5:], v[:, 5:], 5, after=out)
    whole_k, whole_v = write_cache(empty, empty, k, v, 0)
    np.testing.assert_array_equal(after_k, whole_k)
    np.testing.assert_array_equal(after_v, whole_v)
