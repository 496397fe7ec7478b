"""BERT with a sequence-classification head, laid out to map one to one onto HF BertForSequenceClassification.

The encoder part has exactly BertMLM's parameter paths (see model/encoder.py), so a
pretrained MLM checkpoint's `embeddings` and `layers` load into it unchanged; the MLM
head is dropped. Head parameters and their Hugging Face names:

    pooler.{kernel,bias}      bert.pooler.dense.{weight,bias}   (kernel [hidden, hidden])
    classifier.{kernel,bias}  classifier.{weight,bias}          (kernel [hidden, num_labels])

`pooling="cls"` is BERT's: the pooler (dense + tanh) reads the [CLS] hidden state.
`pooling="mean"` feeds the pooler the mean of the row's non-padding hidden states
instead, keeping the same parameters (so either exports alike).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from model import precision
from model.block import EncoderBlock
from model.config import ModelConfig
from model.dropout import dropout, layer_keys, site_key
from model.embeddings import BertEmbeddings
from model.sharding import constrain, param_init
from model.stack import create_stack, scan_stack

POOLINGS = ("cls", "mean")


class BertClassifier(nnx.Module):
    """Encoder, pooler (dense + tanh), dropout, classifier dense: float32 logits [B, num_labels]."""

    def __init__(self, cfg: ModelConfig, num_labels: int, *, pooling: str = "cls",
                 classifier_dropout: float | None = None, rngs: nnx.Rngs):
        if pooling not in POOLINGS:
            raise ValueError(f"pooling={pooling!r}; accepted: {', '.join(POOLINGS)}")
        if num_labels < 2:
            raise ValueError(f"num_labels={num_labels}; a classifier needs at least 2 labels")
        dtype, param_dtype = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
        normal = nnx.initializers.normal(cfg.init_std)
        zeros = nnx.initializers.zeros_init()
        self.embeddings = BertEmbeddings(cfg, rngs=rngs)
        self.layers = create_stack(lambda r: EncoderBlock(cfg, rngs=r), cfg.num_layers, rngs)
        # The pooler is hidden -> hidden like the MLM head's transform, and shards like it.
        self.pooler = precision.Linear(
            cfg.hidden, cfg.hidden, kernel_init=param_init(normal, ("embed", "transform")),
            bias_init=param_init(zeros, ("transform",)), dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.classifier = precision.Linear(
            cfg.hidden, num_labels, kernel_init=param_init(normal, ("transform", "classes")),
            bias_init=param_init(zeros, ("classes",)), dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.pooling = pooling
        self.dropout_rate = cfg.dropout if classifier_dropout is None else classifier_dropout
        self.num_layers = cfg.num_layers
        self.remat = cfg.remat

    def __call__(self, tokens: jax.Array, segment_ids: jax.Array, positions: jax.Array, *,
                 token_types: jax.Array | None = None, dropout_key: jax.Array | None = None) -> jax.Array:
        """Class logits, float32 [B, num_labels], for rows holding one example each.

        Inputs are int32 [B, L] as for BertMLM.encode (segment 0 is padding); `token_types`
        marks the second text of a pair with 1.
        """
        hidden_BLD = self.encode(tokens, segment_ids, positions, token_types=token_types,
                                 dropout_key=site_key(dropout_key, 0))
        pooled_BD = jnp.tanh(self.pooler(self.pool(hidden_BLD, segment_ids)).astype(jnp.float32))
        pooled_BD = dropout(pooled_BD, self.dropout_rate, site_key(dropout_key, 1))
        return self.classifier(pooled_BD.astype(hidden_BLD.dtype)).astype(jnp.float32)

    def pool(self, hidden_BLD: jax.Array, segment_ids: jax.Array) -> jax.Array:
        """The pooler's input [B, hidden]: the first ([CLS]) hidden state, or the mean of non-padding ones."""
        if self.pooling == "cls":
            return hidden_BLD[:, 0]
        weights_BL = (segment_ids > 0).astype(jnp.float32)
        total_BD = jnp.einsum("bld,bl->bd", hidden_BLD.astype(jnp.float32), weights_BL)
        mean_BD = total_BD / jnp.maximum(weights_BL.sum(axis=1, keepdims=True), 1.0)
        return mean_BD.astype(hidden_BLD.dtype)

    def encode(self, tokens: jax.Array, segment_ids: jax.Array, positions: jax.Array, *,
               token_types: jax.Array | None = None, dropout_key: jax.Array | None = None) -> jax.Array:
        """Final hidden states [B, L, hidden], computed exactly as BertMLM.encode does."""
        x = self.embeddings(tokens, positions, token_types=token_types, dropout_key=site_key(dropout_key, 0))

        def apply_block(block: EncoderBlock, x: jax.Array, key: jax.Array | None) -> jax.Array:
            return block(x, segment_ids, dropout_key=key)

        keys = layer_keys(site_key(dropout_key, 1), self.num_layers)
        x = scan_stack(self.layers, x, keys, apply_block, remat=self.remat)
        return constrain(x, ("act_batch", "act_length", "act_embed"))
