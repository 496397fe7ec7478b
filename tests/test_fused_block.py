"""The decoding layout's fused layer computes what the trained layer computes, from the same weights."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from model.block import DecoderBlock
from model.config import ModelConfig
from model.fused_block import FusedDecoderBlock


@pytest.mark.parametrize("num_kv_heads", [2, 4])  # grouped-query and plain multi-head
def test_fused_block_matches_the_block_in_prefill_and_decode(num_kv_heads):
    cfg = ModelConfig(arch="llama", vocab_size=64, max_len=32, hidden=32, num_layers=1, num_heads=4,
                      num_kv_heads=num_kv_heads, mlp_dim=48, dropout=0.0, attention_dropout=0.0,
                      rope_theta=10000.0, init_std=0.3)
    block = DecoderBlock(cfg, rngs=nnx.Rngs(0))
    fused = FusedDecoderBlock(block)
    x = jax.random.normal(jax.random.key(1), (2, 6, 32))
    segments = jnp.asarray([[1] * 6, [0, 0, 1, 1, 1, 1]], jnp.int32)
    positions = jnp.asarray([list(range(6)), [0, 0, 0, 1, 2, 3]], jnp.int32)
    for want, got in zip(block(x, segments, positions), fused(x, segments, positions)):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5)

    cache = jnp.zeros((2, num_kv_heads, 8, 8))
    mask = (jnp.arange(8) < 3)[None, None, :].repeat(2, axis=0)
    step = (x[:, :1], positions[:, :1] + 3, cache, cache + 1.0, jnp.int32(3), mask)
    for want, got in zip(block.decode(*step), fused.decode(*step)):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5)
