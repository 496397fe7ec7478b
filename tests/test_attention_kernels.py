"""The fused attention kernels against the XLA path: Splash (interpreted on CPU) outputs and
gradients on packed rows; cuDNN's packed layout describes the same mask; `auto` per platform."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from model.attention import attention_backend, attention_mask, dot_product_attention, self_attention
from model.cudnn import packed_segments
from train.mesh import make_mesh, sharding_context

from tests.train_fixtures import packed_segment_ids as packed_rows


def _qkv(batch, length, heads, kv_heads, head_dim, dtype, seed=1):
    keys = jax.random.split(jax.random.key(seed), 4)
    q = jax.random.normal(keys[0], (batch, length, heads, head_dim), jnp.float32)
    k, v = (jax.random.normal(key, (batch, length, kv_heads, head_dim), jnp.float32) for key in keys[1:3])
    cotangent = jax.random.normal(keys[3], (batch, length, heads, head_dim), jnp.float32)
    return q.astype(dtype), k.astype(dtype), v.astype(dtype), cotangent


def _traced_outputs_and_grads(impl, q, k, v, cotangent, segments, causal):
    def loss(q, k, v):
        out = self_attention(q, k, v, segments, causal=causal, impl=impl)
        return jnp.sum(out.astype(jnp.float32) * cotangent), out

    (_, out), grads = jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True)(q, k, v)
    return [x.astype(jnp.float32) for x in (out, *grads)]


def _outputs_and_grads(*args):
    return [np.asarray(x) for x in _traced_outputs_and_grads(*args)]


def test_splash_equals_xla_on_packed_rows_in_float32():
    """Causal, grouped-query (2 query heads a key/value head), several documents and padding a row."""
    segments = jnp.asarray(packed_rows(2, 256, seed=1))
    q, k, v, cotangent = _qkv(2, 256, heads=4, kv_heads=2, head_dim=16, dtype=jnp.float32)
    xla = _outputs_and_grads("xla", q, k, v, cotangent, segments, True)
    splash = _outputs_and_grads("splash", q, k, v, cotangent, segments, True)
    for name, a, b in zip(("output", "dq", "dk", "dv"), splash, xla):
        np.testing.assert_allclose(a, b, atol=2e-5, rtol=1e-5, err_msg=name)


def test_splash_equals_xla_in_bfloat16_bidirectional():
    """Bidirectional, one key/value head, rows of 200 (not whole 128-token blocks: padded inside)."""
    segments = jnp.asarray(packed_rows(2, 200, seed=3))
    q, k, v, cotangent = _qkv(2, 200, heads=4, kv_heads=1, head_dim=32, dtype=jnp.bfloat16)
    xla = _outputs_and_grads("xla", q, k, v, cotangent, segments, False)
    splash = _outputs_and_grads("splash", q, k, v, cotangent, segments, False)
    for name, a, b in zip(("output", "dq", "dk", "dv"), splash, xla):
        np.testing.assert_allclose(a, b, atol=2e-2 * np.abs(b).max(), rtol=2e-2, err_msg=name)


@pytest.mark.parametrize("causal", [True, False])
def test_splash_per_shard_equals_xla_with_heads_and_length_split(causal):
    """Rows over data, heads over tensor, queries over sequence (keys and values gathered)."""
    segments = jnp.asarray(packed_rows(2, 256, seed=5))
    q, k, v, cotangent = _qkv(2, 256, heads=4, kv_heads=2, head_dim=16, dtype=jnp.float32)
    xla = _outputs_and_grads("xla", q, k, v, cotangent, segments, causal)
    mesh = make_mesh((2, 1, 2, 2))
    step = jax.jit(lambda *args: _traced_outputs_and_grads("splash", *args, causal))
    with sharding_context(mesh):
        sharded = [np.asarray(x) for x in step(q, k, v, cotangent, segments)]
        program = step.lower(q, k, v, cotangent, segments).compile().as_text()
    assert "all-gather" in program  # keys and values gathered over the sequence axis
    for name, a, b in zip(("output", "dq", "dk", "dv"), sharded, xla):
        np.testing.assert_allclose(a, b, atol=2e-5, rtol=1e-5, err_msg=name)


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("left_pad", [False, True])
def test_cudnn_packed_layout_describes_the_segment_mask(causal, left_pad):
    """cuDNN sees documents as (start, length) per row: rebuilding the mask from them gives
    the XLA path's mask on every real token (padding belongs to no document)."""
    segments = packed_rows(3, 64, seed=7 + left_pad, left_pad=left_pad)
    lengths, starts = (np.asarray(x) for x in packed_segments(jnp.asarray(segments), 16))
    assert lengths.shape == (3, 16) and starts.shape == (3, 17) and starts[:, -1].tolist() == [-1] * 3
    index = np.arange(64)
    for row, ids in enumerate(segments):
        rebuilt = np.zeros((64, 64), bool)
        for start, size in zip(starts[row], lengths[row]):
            if size < 0:
                assert start == -1  # unused entries are -1 in both
                continue
            inside = (index >= start) & (index < start + size)
            rebuilt |= inside[:, None] & inside[None, :]
        if causal:
            rebuilt &= index[:, None] >= index[None, :]
        expected = np.asarray(attention_mask(jnp.asarray(ids[None]), jnp.asarray(ids[None]), causal))[0, 0]
        real = ids > 0
        np.testing.assert_array_equal(rebuilt[real], expected[real])
        assert not rebuilt[~real].any()


def test_auto_picks_the_kernel_per_platform():
    common = dict(dtype="bfloat16", dropout_rate=0.0, head_dim=64)
    assert attention_backend("auto", platform="tpu", **common) == "splash"
    assert attention_backend("auto", platform="gpu", **common) == "cudnn"
    assert attention_backend("auto", platform="cpu", **common) == "xla"
    # Where the fused kernel cannot run the model, auto keeps the XLA path.
    assert attention_backend("auto", platform="gpu", **{**common, "dtype": "float32"}) == "xla"
    assert attention_backend("auto", platform="gpu", **common, length_sharded=True) == "xla"
    assert attention_backend("auto", platform="tpu", **{**common, "dropout_rate": 0.1}) == "xla"
    assert attention_backend("splash", platform="cpu", **common) == "splash"  # named: as named
    assert jax.default_backend() == "cpu" and attention_backend("auto", **common) == "xla"


def test_only_the_xla_path_builds_an_l_by_l_array():
    """No [L, L] array in the Splash program (interpreted, blocks of 128); the XLA path's mask and scores are."""
    length = 384
    segments = jnp.asarray(packed_rows(1, length))
    q, k, v, _ = _qkv(1, length, heads=2, kv_heads=2, head_dim=16, dtype=jnp.float32)

    def program(impl):
        return jax.jit(lambda q, k, v: self_attention(q, k, v, segments, causal=True, impl=impl)).lower(q, k, v).as_text()

    assert f"{length}x{length}x" in program("xla")
    assert f"{length}x{length}x" not in program("splash")
