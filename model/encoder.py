"""The BERT encoder with its masked-LM head, laid out to map one to one onto HF BertForMaskedLM.

Parameter paths and their Hugging Face names (i = layer index into the stacked axis;
q/k/v kernels [hidden, H, D] become HF's [H*D, hidden] by reshape and transpose):

    embeddings.word.embedding        bert.embeddings.word_embeddings.weight (tied decoder)
    embeddings.position.embedding    bert.embeddings.position_embeddings.weight
    embeddings.token_type.embedding  bert.embeddings.token_type_embeddings.weight
    embeddings.norm.{scale,bias}     bert.embeddings.LayerNorm.{weight,bias}
    layers.attention.{query,key,value}.{kernel,bias}[i]
                                     bert.encoder.layer.i.attention.self.{query,key,value}
    layers.attention.out.{kernel,bias}[i]  ...layer.i.attention.output.dense
    layers.attention_norm.{scale,bias}[i]  ...layer.i.attention.output.LayerNorm
    layers.mlp.up.{kernel,bias}[i]         ...layer.i.intermediate.dense
    layers.mlp.down.{kernel,bias}[i]       ...layer.i.output.dense
    layers.mlp_norm.{scale,bias}[i]        ...layer.i.output.LayerNorm
    head.transform.{kernel,bias}     cls.predictions.transform.dense
    head.norm.{scale,bias}           cls.predictions.transform.LayerNorm
    head.bias                        cls.predictions.bias (= decoder.bias)
"""

from __future__ import annotations

import jax
from flax import nnx

from model.block import EncoderBlock
from model.config import ModelConfig
from model.dropout import layer_keys, site_key
from model.embeddings import BertEmbeddings
from model.heads import MlmHead
from model.stack import create_stack, scan_stack


class BertMLM(nnx.Module):
    """BERT for masked-LM over packed rows; holds parameters only (dropout takes a key)."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.embeddings = BertEmbeddings(cfg, rngs=rngs)
        self.layers = create_stack(lambda r: EncoderBlock(cfg, rngs=r), cfg.num_layers, rngs)
        self.head = MlmHead(cfg, rngs=rngs)
        self.num_layers = cfg.num_layers
        self.remat = cfg.remat
        self.scan_layers = cfg.scan_layers

    def __call__(self, tokens: jax.Array, segment_ids: jax.Array, positions: jax.Array, *,
                 dropout_key: jax.Array | None = None) -> jax.Array:
        """MLM logits, float32 [B, L, vocab]; `dropout_key=None` runs deterministically."""
        return self.logits(self.encode(tokens, segment_ids, positions, dropout_key=dropout_key))

    def logits(self, hidden: jax.Array) -> jax.Array:
        """MLM logits, float32 [..., vocab], for hidden states [..., hidden] (e.g. only masked ones)."""
        return self.head(hidden, self.embeddings.word.embedding[...])

    def encode(self, tokens: jax.Array, segment_ids: jax.Array, positions: jax.Array, *,
               dropout_key: jax.Array | None = None) -> jax.Array:
        """Final hidden states [B, L, hidden] in compute dtype, for the MLM or fine-tuning heads.

        Inputs are int32 [B, L]: segment 0 is padding, 1..k the documents packed in a row;
        positions restart at 0 in each document.
        """
        x = self.embeddings(tokens, positions, dropout_key=site_key(dropout_key, 0))
        return self.apply_layers(x, segment_ids, dropout_key=site_key(dropout_key, 1))

    def apply_layers(self, x: jax.Array, segment_ids: jax.Array, *,
                     dropout_key: jax.Array | None = None) -> jax.Array:
        """Runs embedded inputs [B, L, hidden] through all blocks (a scan over the stack, or unrolled)."""

        def apply_block(block: EncoderBlock, x: jax.Array, key: jax.Array | None) -> jax.Array:
            return block(x, segment_ids, dropout_key=key)

        keys = layer_keys(dropout_key, self.num_layers)
        return scan_stack(self.layers, x, keys, apply_block, remat=self.remat, scan=self.scan_layers)
