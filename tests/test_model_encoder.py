"""BertMLM: shapes, parameter metadata, packing isolation, dropout, tied decoder, positions."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from model import BertMLM, ModelConfig

VOCAB, HIDDEN, LENGTH = 96, 32, 12
PARAM_NAMES = {"vocab", "embed", "heads", "kv_heads", "head_dim", "mlp", "transform", "layers", "norm", None}


def _key(seed: int) -> jax.Array:
    """A PRNG key; rbg compiles several times faster than threefry on XLA:CPU."""
    return jax.random.key(seed, impl="rbg")


def _config(**overrides) -> ModelConfig:
    sizes = dict(vocab_size=VOCAB, max_len=16, hidden=HIDDEN, num_layers=2, num_heads=4, mlp_dim=64)
    return ModelConfig(**{**sizes, **overrides})


@pytest.fixture(scope="module")
def model() -> BertMLM:
    return BertMLM(_config(), rngs=nnx.Rngs(_key(0)))


def _packed_row(doc_a: list[int], doc_b: list[int]) -> tuple[jax.Array, jax.Array, jax.Array]:
    """One row holding two documents then padding: tokens, segment ids, positions [1, L]."""
    pad = LENGTH - len(doc_a) - len(doc_b)
    tokens = doc_a + doc_b + [0] * pad
    segments = [1] * len(doc_a) + [2] * len(doc_b) + [0] * pad
    positions = list(range(len(doc_a))) + list(range(len(doc_b))) + [0] * pad
    return tuple(jnp.asarray([x], jnp.int32) for x in (tokens, segments, positions))


DOC_A, DOC_B = [5, 6, 7, 8, 9], [10, 11, 12, 13]
SEG_A, SEG_B = slice(0, 5), slice(5, 9)


def test_output_shapes_and_dtypes(model):
    tokens, segments, positions = _packed_row(DOC_A, DOC_B)
    logits = model(tokens, segments, positions)
    hidden = model.encode(tokens, segments, positions)
    assert logits.shape == (1, LENGTH, VOCAB) and logits.dtype == jnp.float32
    assert hidden.shape == (1, LENGTH, HIDDEN) and hidden.dtype == jnp.float32
    assert bool(jnp.isfinite(logits).all())  # padding rows included


def test_bfloat16_compute_keeps_float32_logits_and_params():
    model = BertMLM(_config(num_layers=1, dtype="bfloat16"), rngs=nnx.Rngs(_key(0)))
    tokens, segments, positions = _packed_row(DOC_A, DOC_B)
    assert model(tokens, segments, positions).dtype == jnp.float32
    assert model.encode(tokens, segments, positions).dtype == jnp.bfloat16
    assert {p.dtype for p in jax.tree.leaves(nnx.state(model, nnx.Param))} == {jnp.dtype("float32")}


def test_state_is_parameters_only_each_with_logical_names(model):
    graphdef, params = nnx.split(model, nnx.Param)  # fails if any other variable type exists
    assert len(jax.tree.leaves(params)) == len(jax.tree.leaves(nnx.state(model)))
    for path, var in nnx.to_flat_state(params):
        names = var.get_metadata().get("out_sharding")
        where = ".".join(map(str, path))
        assert isinstance(names, tuple) and len(names) == var.ndim, where
        assert set(names) <= PARAM_NAMES, where
        strings = [n for n in names if n is not None]
        assert len(strings) == len(set(strings)), f"{where} repeats a name: {names}"
        assert (names[0] == "layers") == (path[0] == "layers"), where
        assert names.count("layers") == (path[0] == "layers"), where
    assert params["layers"]["attention"]["query"]["kernel"].shape == (2, HIDDEN, 4, 8)


def test_attention_never_crosses_documents(model):
    base = model(*_packed_row(DOC_A, DOC_B))
    other_b = model(*_packed_row(DOC_A, [20, 21, 22, 23]))
    other_a = model(*_packed_row([30, 31, 32, 33, 34], DOC_B))
    np.testing.assert_allclose(other_b[0, SEG_A], base[0, SEG_A], atol=1e-6)
    np.testing.assert_allclose(other_a[0, SEG_B], base[0, SEG_B], atol=1e-6)
    assert not np.allclose(other_b[0, SEG_B], base[0, SEG_B], atol=1e-4)
    assert not np.allclose(other_a[0, SEG_A], base[0, SEG_A], atol=1e-4)


def test_no_gradient_flows_between_documents(model):
    tokens, segments, positions = _packed_row(DOC_A, DOC_B)
    embedded = model.embeddings(tokens, positions)
    graphdef, params = nnx.split(model, nnx.Param)

    def doc_a_logits(x):
        m = nnx.merge(graphdef, params, copy=True)  # nnx.scan refuses outer-trace variables
        return m.head(m.apply_layers(x, segments), m.embeddings.word.embedding[...])[0, SEG_A].sum()

    grad = jax.jit(jax.grad(doc_a_logits))(embedded)
    assert float(jnp.abs(grad[0, SEG_B]).max()) == 0.0
    assert float(jnp.abs(grad[0, SEG_A]).min()) > 0.0


def test_attention_is_bidirectional_within_a_document(model):
    base = model(*_packed_row(DOC_A, DOC_B))
    changed_last = model(*_packed_row(DOC_A[:-1] + [40], DOC_B))
    assert not np.allclose(changed_last[0, 0], base[0, 0], atol=1e-4)


def test_dropout_is_keyed_and_off_without_a_key():
    model = BertMLM(_config(dropout=0.1, attention_dropout=0.1), rngs=nnx.Rngs(_key(0)))
    inputs = _packed_row(DOC_A, DOC_B)
    key, other_key = _key(1), _key(2)
    plain = model(*inputs)
    np.testing.assert_array_equal(model(*inputs), plain)
    keyed = model(*inputs, dropout_key=key)
    np.testing.assert_array_equal(model(*inputs, dropout_key=key), keyed)
    assert not np.allclose(keyed, plain, atol=1e-4)
    assert not np.allclose(model(*inputs, dropout_key=other_key), keyed, atol=1e-4)


def test_decoder_is_tied_to_the_word_embeddings(model):
    vocab_sized = [".".join(map(str, p)) for p, v in nnx.to_flat_state(nnx.state(model)) if VOCAB in v.shape]
    assert sorted(vocab_sized) == ["embeddings.word.embedding", "head.bias"]
    model.head.bias[...] = jnp.asarray(np.random.default_rng(3).normal(size=VOCAB), jnp.float32)
    tokens, segments, positions = _packed_row(DOC_A, DOC_B)
    head = model.head
    hidden = model.encode(tokens, segments, positions)
    h = head.norm(jax.nn.gelu(head.transform(hidden), approximate=False))
    expected = h @ model.embeddings.word.embedding[...].T + head.bias[...]
    np.testing.assert_allclose(model(tokens, segments, positions), expected, atol=1e-5)
    gathered = hidden[:, jnp.asarray([1, 6])]  # logits of chosen positions only, as the MLM loss does
    np.testing.assert_allclose(model.logits(gathered), expected[:, jnp.asarray([1, 6])], atol=1e-5)
    model.head.bias[...] = jnp.zeros((VOCAB,))


def test_positions_restart_in_each_document(model):
    doc, filler = [5, 6, 7, 8], [9, 10, 11, 12, 13]
    first = model(*_packed_row(doc, filler))[0, 0:4]
    second = model(*_packed_row(filler, doc))[0, 5:9]
    np.testing.assert_allclose(second, first, atol=1e-5)


def test_sinusoidal_position_init_has_the_normal_init_rms_and_relative_structure():
    table = np.asarray(BertMLM(_config(position_init="sinusoidal", init_std=0.05),
                               rngs=nnx.Rngs(_key(0))).embeddings.position.embedding[...])
    assert abs(np.sqrt(np.mean(table ** 2)) - 0.05) < 0.002
    np.testing.assert_allclose(table[:, 0], 0.05 * np.sqrt(2) * np.sin(np.arange(16)), atol=1e-6)
    dots = table @ table.T  # depends on the offset only: equal along each diagonal
    np.testing.assert_allclose(np.diagonal(dots, 1), np.full(15, dots[0, 1]), rtol=1e-4)
