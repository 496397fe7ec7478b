"""MLM masking statistics: 15% of ordinary tokens, 80/10/10, specials never chosen, whole words."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from train.masking import MaskingSpec, gather_predictions, mask_tokens, prediction_budget

VOCAB, SPECIALS, MASK_ID = 1000, (0, 1, 2, 3, 4), 4


def _tokens(seed=0, shape=(256, 128)):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(5, VOCAB, shape).astype(np.int32)
    # Sprinkle specials and padding where a packed row has them.
    tokens[:, 0] = 2
    tokens[:, 60] = 3
    tokens[:, 61] = 2
    tokens[:, -10:] = 0
    return tokens


def test_rates_and_specials():
    tokens = _tokens()
    spec = MaskingSpec(mask_id=MASK_ID, vocab_size=VOCAB, special_ids=SPECIALS)
    inputs, targets, weights = jax.device_get(mask_tokens(jax.random.key(0), jnp.asarray(tokens), spec))
    chosen = weights > 0
    special = np.isin(tokens, SPECIALS)
    assert not chosen[special].any(), "a special or pad token was chosen"
    assert (inputs[special] == tokens[special]).all()
    assert (targets == tokens).all()
    rate = chosen.sum() / (~special).sum()
    assert abs(rate - 0.15) < 0.01, rate
    masked = inputs[chosen] == MASK_ID
    kept = inputs[chosen] == tokens[chosen]
    randomized = ~masked & ~kept
    assert abs(masked.mean() - 0.8) < 0.02, masked.mean()
    # A random draw equal to the original counts as kept: 1 chance in ~1000.
    assert abs(kept.mean() - 0.1) < 0.02, kept.mean()
    assert abs(randomized.mean() - 0.1) < 0.02, randomized.mean()
    assert (inputs[chosen][randomized] >= 5).all(), "random replacements must be ordinary tokens"
    assert (inputs[~chosen] == tokens[~chosen]).all(), "unchosen tokens must be untouched"


def test_deterministic_in_key():
    tokens = jnp.asarray(_tokens())
    spec = MaskingSpec(mask_id=MASK_ID, vocab_size=VOCAB, special_ids=SPECIALS)
    a = jax.device_get(mask_tokens(jax.random.key(7), tokens, spec))
    b = jax.device_get(mask_tokens(jax.random.key(7), tokens, spec))
    c = jax.device_get(mask_tokens(jax.random.key(8), tokens, spec))
    assert all((x == y).all() for x, y in zip(a, b))
    assert (a[2] != c[2]).any()


@pytest.mark.parametrize("probability", [0.15, 0.3])
def test_whole_word_masking_takes_whole_words(probability):
    rng = np.random.default_rng(1)
    word_start = np.zeros(VOCAB, bool)
    word_start[5:500] = True  # ids 5..499 start a word, 500.. continue one
    tokens = _tokens()
    continuation = rng.random(tokens.shape) < 0.4
    tokens = np.where(continuation & (tokens >= 5), rng.integers(500, VOCAB, tokens.shape), tokens).astype(np.int32)
    spec = MaskingSpec(mask_id=MASK_ID, vocab_size=VOCAB, special_ids=SPECIALS, probability=probability,
                       word_start_table=word_start)
    _, _, weights = jax.device_get(mask_tokens(jax.random.key(3), jnp.asarray(tokens), spec))
    chosen = weights > 0
    special = np.isin(tokens, SPECIALS)
    assert not chosen[special].any()
    for row_tokens, row_chosen in zip(tokens, chosen):
        word_chosen = None
        for i, t in enumerate(row_tokens):
            starts = word_start[t] or t in SPECIALS or (i > 0 and row_tokens[i - 1] in SPECIALS)
            if t in SPECIALS:
                word_chosen = None
                continue
            if starts:
                word_chosen = row_chosen[i]
            else:
                assert row_chosen[i] == word_chosen, "a word was only partly chosen"
    words = sum(1 for row in tokens for i, t in enumerate(row)
                if t not in SPECIALS and (word_start[t] or row[i - 1] in SPECIALS))
    chosen_words = sum(1 for row, rc in zip(tokens, chosen) for i, t in enumerate(row)
                       if t not in SPECIALS and (word_start[t] or row[i - 1] in SPECIALS) and rc[i])
    assert abs(chosen_words / words - probability) < 0.01


def test_prediction_budget_caps_each_row_and_keeps_the_rate():
    tokens = jnp.asarray(_tokens())
    budget = prediction_budget(tokens.shape[1], 0.15)
    spec = MaskingSpec(mask_id=MASK_ID, vocab_size=VOCAB, special_ids=SPECIALS, max_predictions=budget)
    inputs, _, weights = jax.device_get(mask_tokens(jax.random.key(0), tokens, spec))
    chosen = weights > 0
    assert chosen.sum(axis=1).max() <= budget
    # Capped tokens are neither predicted nor corrupted.
    assert (inputs[~chosen] == np.asarray(tokens)[~chosen]).all()
    rate = chosen.sum() / (~np.isin(np.asarray(tokens), SPECIALS)).sum()
    assert abs(rate - 0.15) < 0.01, rate
    hidden = np.random.default_rng(0).normal(size=tokens.shape + (3,)).astype(np.float32)
    h, t, w = jax.device_get(gather_predictions(jnp.asarray(weights), budget, jnp.asarray(hidden), tokens))
    for row in range(tokens.shape[0]):
        where = np.flatnonzero(chosen[row])
        n = where.size
        np.testing.assert_array_equal(t[row, :n], np.asarray(tokens)[row, where])
        np.testing.assert_array_equal(h[row, :n], hidden[row, where])
        assert (w[row, :n] == 1).all() and (w[row, n:] == 0).all() and (h[row, n:] == 0).all()
