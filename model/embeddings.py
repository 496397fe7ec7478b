"""BERT's input embeddings: word + learned position + token type, LayerNorm, dropout."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from model.config import ModelConfig
from model.dropout import dropout
from model.norm import LayerNorm
from model.sharding import constrain, param_init


def embedding_table(rows: int, cfg: ModelConfig, names: tuple[str | None, str], rngs: nnx.Rngs) -> nnx.Embed:
    """A [rows, hidden] lookup table with normal(init_std) entries."""
    init = param_init(nnx.initializers.normal(cfg.init_std), names)
    return nnx.Embed(rows, cfg.hidden, embedding_init=init, param_dtype=jnp.dtype(cfg.param_dtype),
                     rngs=rngs)


def lookup_rows(table: nnx.Embed, ids: jax.Array, table_names: tuple[str | None, str | None]) -> jax.Array:
    """Rows of a table as float32, gathered whole along `embed` first.

    The FSDP-sharded `embed` axis cannot be re-split into the batch after a gather
    (XLA would replicate everything), so the table is laid out as `table_names` first.
    """
    rows = constrain(table.embedding[...], table_names)
    return jnp.take(rows, ids, axis=0).astype(jnp.float32)


def sinusoidal_table(rows: int, width: int, rms: float) -> jax.Array:
    """Transformer sinusoids [rows, width] (sin on even, cos on odd columns), scaled to RMS `rms`."""
    position = jnp.arange(rows, dtype=jnp.float32)[:, None]
    frequency = jnp.exp(-jnp.log(10000.0) * jnp.arange(0, width, 2, dtype=jnp.float32) / width)
    table = jnp.zeros((rows, width), jnp.float32)
    table = table.at[:, 0::2].set(jnp.sin(position * frequency))
    table = table.at[:, 1::2].set(jnp.cos(position * frequency[: width // 2]))
    return table * (rms * jnp.sqrt(2.0))


class BertEmbeddings(nnx.Module):
    """Token ids and per-document positions to the first hidden states [B, L, hidden]."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.word = embedding_table(cfg.vocab_size, cfg, ("vocab", "embed"), rngs)
        self.position = embedding_table(cfg.max_len, cfg, (None, "embed"), rngs)
        if cfg.position_init == "sinusoidal":
            self.position.embedding[...] = sinusoidal_table(cfg.max_len, cfg.hidden, cfg.init_std).astype(
                self.position.embedding[...].dtype)
        # Pretraining rows are all type 0; sentence-pair fine-tuning marks the second text 1.
        self.token_type = embedding_table(2, cfg, (None, "embed"), rngs)
        self.norm = LayerNorm(cfg.hidden, eps=cfg.layer_norm_eps, dtype=jnp.dtype(cfg.dtype),
                              param_dtype=jnp.dtype(cfg.param_dtype), rngs=rngs)
        self.dropout_rate = cfg.dropout

    def __call__(self, tokens: jax.Array, positions: jax.Array, *,
                 dropout_key: jax.Array | None = None, token_types: jax.Array | None = None) -> jax.Array:
        """Sums the three embeddings in float32, normalizes, drops out; output in compute dtype.

        `token_types` [B, L] (0 or 1) defaults to type 0 everywhere.
        """
        if token_types is None:
            types = self.token_type.embedding[0].astype(jnp.float32)
        else:
            types = lookup_rows(self.token_type, token_types, (None, None))
        x = (lookup_rows(self.word, tokens, ("act_vocab", None))
             + lookup_rows(self.position, positions, (None, None))
             + types)
        x = dropout(self.norm(x), self.dropout_rate, dropout_key)
        return constrain(x, ("act_batch", "act_length", "act_embed"))
