"""The Llama-style decoder and the causal LM objective: RoPE/RMSNorm/SwiGLU/GQA layout, loss goes
down, sharded equals one device, and no prediction crosses a document boundary."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from model import LlamaLM
from model.rope import apply_rope
from train.config import ConfigError, OptimConfig, validate
from train.losses import next_token_targets
from train.mesh import check_divisibility, make_mesh

from tests.train_fixtures import tiny_batch, tiny_config, train_decoder_steps


def llama_config(**train):
    config = tiny_config(**train)
    config.model = dataclasses.replace(config.model, arch="llama", num_kv_heads=2, layer_norm_eps=1e-5,
                                       init_std=0.1)
    return config


def test_llama_param_tree_is_bias_free_and_maps_to_hf_names():
    model = LlamaLM(llama_config().model, rngs=nnx.Rngs(0))
    params = nnx.to_pure_dict(nnx.state(model))
    layers = params["layers"]
    assert set(params) == {"embed", "layers", "final_norm"}  # tied: no lm_head
    assert set(layers["attention"]) == {"query", "key", "value", "out"}
    assert set(layers["mlp"]) == {"gate", "up", "down"}
    assert layers["attention"]["key"]["kernel"].shape == (2, 32, 2, 8)  # [layers, embed, kv_heads, head_dim]
    assert not [p for p in jax.tree_util.tree_leaves_with_path(params) if "bias" in jax.tree_util.keystr(p[0])]
    untied = LlamaLM(dataclasses.replace(llama_config().model, tie_embeddings=False), rngs=nnx.Rngs(0))
    assert nnx.to_pure_dict(nnx.state(untied))["lm_head"]["kernel"].shape == (32, 64)
    names = {tuple(v.out_sharding) for v in jax.tree.leaves(nnx.state(model), is_leaf=lambda x: isinstance(x, nnx.Variable))}
    assert ("layers", "embed", "kv_heads", "head_dim") in names and ("vocab", "embed") in names


def test_rope_rotates_halves_and_keeps_relative_positions():
    x = jax.random.normal(jax.random.key(0), (1, 1, 1, 8))
    pos = jnp.array([[3]])
    # Half rotation: pair (i, i + D/2) turns by angle pos * theta^(-2i/D).
    angle = 3.0 * 10000.0 ** (-jnp.arange(4) * 2 / 8)
    x1, x2 = x[..., :4], x[..., 4:]
    want = jnp.concatenate([x1 * jnp.cos(angle) - x2 * jnp.sin(angle), x2 * jnp.cos(angle) + x1 * jnp.sin(angle)], -1)
    np.testing.assert_allclose(apply_rope(x, pos, 10000.0), want, rtol=1e-5, atol=1e-6)
    q, k = jax.random.normal(jax.random.key(1), (2, 1, 1, 1, 8))
    dot = lambda a, b: float(jnp.sum(apply_rope(q, jnp.array([[a]]), 1e4) * apply_rope(k, jnp.array([[b]]), 1e4)))
    assert dot(5, 2) == pytest.approx(dot(13, 10), rel=1e-4)


def test_next_token_targets_stop_at_segment_ends():
    tokens = jnp.array([[10, 11, 12, 20, 21, 0]])
    segments = jnp.array([[1, 1, 1, 2, 2, 0]])
    targets, weights = next_token_targets(tokens, segments)
    np.testing.assert_array_equal(targets[0, :5], [11, 12, 20, 21, 0])
    np.testing.assert_array_equal(weights[0], [1, 1, 0, 1, 0, 0])


def test_document_two_does_not_change_document_one():
    model = LlamaLM(llama_config().model, rngs=nnx.Rngs(0))
    batch = tiny_batch(rows=1)
    other = {k: v.copy() for k, v in batch.items()}
    other["tokens"][0, 9:13] = (other["tokens"][0, 9:13] + 7) % 59 + 5  # inside document 2
    first = batch["segment_ids"][0] == 1
    a, b = (model(*(jnp.asarray(x[k]) for k in ("tokens", "segment_ids", "positions"))) for x in (batch, other))
    np.testing.assert_allclose(a[0][first], b[0][first], rtol=1e-6, atol=1e-6)
    assert not np.allclose(a[0][~first], b[0][~first])


def test_causal_loss_goes_down():
    config = llama_config(steps=60)
    config.optim = OptimConfig(learning_rate=1e-2, schedule="constant", warmup_steps=0, weight_decay=0.0)
    losses = train_decoder_steps(config, (1, 1, 1), 60, devices=jax.devices()[:1])[3]
    assert np.mean(losses[-5:]) < 0.5 * losses[0], losses[::10]


def test_decoder_sharded_loss_equals_one_device():
    config = llama_config()
    single = train_decoder_steps(config, (1, 1, 1), 3, devices=jax.devices()[:1])[3]
    sharded = train_decoder_steps(config, (2, 2, 2), 3)[3]
    np.testing.assert_allclose(sharded, single, rtol=1e-5)


@pytest.mark.parametrize("field, value, words", [
    ("num_kv_heads", 3, "num_kv_heads=3"), ("rope_theta", 0.0, "rope_theta=0.0"), ("arch", "gpt", "accepted: bert, llama")])
def test_bad_decoder_fields_get_one_line(field, value, words):
    config = llama_config()
    setattr(config.model, field, value)
    with pytest.raises(ConfigError, match=words):
        validate(config)


def test_kv_heads_that_do_not_split_over_tensor_get_one_line(tmp_path):
    from train.config import MeshConfig
    from train.loop import train

    config = llama_config()
    config.model = dataclasses.replace(config.model, num_heads=4, num_kv_heads=2)
    config.mesh = MeshConfig(shape=(2, 1, 4))  # 4 query heads split over tensor=4, 2 kv heads do not
    with pytest.raises(ConfigError, match=r"^model.num_kv_heads=2 does not divide by tensor=4 of mesh") as error:
        train(config, tmp_path / "run")
    assert "\n" not in str(error.value) and not (tmp_path / "run").exists()
    check_divisibility(make_mesh((1, 1, 2), jax.devices()[:2]), batch_size=8, num_heads=4, num_kv_heads=2)


def test_decoder_trains_through_the_loop_and_reports_perplexity(tmp_path):
    from train.config import DataConfig, MeshConfig
    from train.loop import train

    config = llama_config(steps=30, batch_size=8, checkpoint_every=30, eval_every=0, eval_batches=2,
                          log_every=10, progress_bar=False)
    config.model = dataclasses.replace(config.model, vocab_size=400, max_len=32, scan_layers=False,
                                       remat="dots")
    config.data = DataConfig(seq_len=32, max_corpus_bytes=150_000, cache_dir=str(tmp_path / "cache"))
    config.optim = OptimConfig(learning_rate=1e-2, warmup_steps=5, weight_decay=0.0)
    config.mesh = MeshConfig(shape=(2, 1, 2))
    final = train(config, tmp_path / "run")
    assert np.isfinite(final["loss"]) and final["perplexity"] == pytest.approx(np.exp(final["loss"]), rel=1e-4)
    # 400 pieces: a uniform guess has perplexity 400; 30 steps already learn the frequent pieces.
    assert final["perplexity"] < 200, final
