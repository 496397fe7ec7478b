"""The Llama-style causal decoder, laid out to map one to one onto HF LlamaForCausalLM.

Parameter paths and their Hugging Face names (i = layer index into the stacked axis;
q/k/v kernels [hidden, H, D] become HF's [H*D, hidden] by reshape and transpose, out
[H, D, hidden] becomes o_proj [hidden, H*D]; Linear kernels [in, out] transpose to [out, in]):

    embed.embedding                      model.embed_tokens.weight
    layers.attention_norm.scale[i]       model.layers.i.input_layernorm.weight
    layers.attention.query.kernel[i]     model.layers.i.self_attn.q_proj.weight
    layers.attention.key.kernel[i]       model.layers.i.self_attn.k_proj.weight
    layers.attention.value.kernel[i]     model.layers.i.self_attn.v_proj.weight
    layers.attention.out.kernel[i]       model.layers.i.self_attn.o_proj.weight
    layers.mlp_norm.scale[i]             model.layers.i.post_attention_layernorm.weight
    layers.mlp.{gate,up,down}.kernel[i]  model.layers.i.mlp.{gate,up,down}_proj.weight
    final_norm.scale                     model.norm.weight
    lm_head.kernel (untied only)         lm_head.weight (tied: embed.embedding)
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from model import precision
from model.block import DecoderBlock
from model.config import ModelConfig
from model.dropout import layer_keys, site_key
from model.embeddings import embedding_table, lookup_rows
from model.decode_kernels import DecodeKernel
from model.fused_block import FusedDecoderBlock
from model.kv_cache import KVCache, write_cache
from model.norm import RMSNorm
from model.sharding import constrain, param_init
from model.stack import LAYERS_AXIS, create_stack, scan_stack, unstack_layers


class LlamaLM(nnx.Module):
    """Causal LM over packed rows (attention stays inside each segment); parameters only."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        dtype, param_dtype = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
        self.embed = embedding_table(cfg.vocab_size, cfg, ("vocab", "embed"), rngs)
        self.layers = create_stack(lambda r: DecoderBlock(cfg, rngs=r), cfg.num_layers, rngs)
        self.final_norm = RMSNorm(cfg.hidden, eps=cfg.layer_norm_eps, dtype=dtype,
                                  param_dtype=param_dtype, rngs=rngs)
        if not cfg.tie_embeddings:
            self.lm_head = precision.Linear(
                cfg.hidden, cfg.vocab_size, use_bias=False,
                kernel_init=param_init(nnx.initializers.normal(cfg.init_std), ("embed", "vocab")),
                dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.tied = cfg.tie_embeddings
        self.dropout_rate = cfg.dropout
        self.num_layers = cfg.num_layers
        self.remat = cfg.remat
        self.scan_layers = cfg.scan_layers
        self.dtype = dtype

    def __call__(self, tokens: jax.Array, segment_ids: jax.Array, positions: jax.Array, *,
                 dropout_key: jax.Array | None = None) -> jax.Array:
        """Next-token logits, float32 [B, L, vocab]; `dropout_key=None` runs deterministically."""
        return self.logits(self.encode(tokens, segment_ids, positions, dropout_key=dropout_key))

    def encode(self, tokens: jax.Array, segment_ids: jax.Array, positions: jax.Array, *,
               dropout_key: jax.Array | None = None) -> jax.Array:
        """Final (normed) hidden states [B, L, hidden]; int32 inputs as in BertMLM.encode."""
        x = self._embed(tokens)
        keys = layer_keys(site_key(dropout_key, 1), self.num_layers)
        if self.decode_layout:
            for i, layer in enumerate(self.layers):
                x = layer(x, segment_ids, positions, dropout_key=None if keys is None else keys[i])[0]
            return self.final_norm(x)

        def apply_block(layer: DecoderBlock, x: jax.Array, key: jax.Array | None) -> jax.Array:
            return layer(x, segment_ids, positions, dropout_key=key)[0]

        x = scan_stack(self.layers, x, keys, apply_block, remat=self.remat, scan=self.scan_layers)
        return self.final_norm(x)

    def logits(self, hidden: jax.Array) -> jax.Array:
        """Float32 logits [..., vocab] for final hidden states [..., hidden]."""
        if self.decode_layout:  # the tied word table or the untied head, held [vocab, embed]
            logits = (self.embed if self.tied else self.lm_head)(hidden, jnp.float32)
        elif self.tied:
            logits = precision.project(hidden.astype(self.dtype), self.embed.embedding[...],
                                       kernel_transposed=True, out_dtype=jnp.float32)
        else:
            logits = precision.project(hidden, self.lm_head.kernel[...], dtype=self.dtype, out_dtype=jnp.float32)
        if logits.ndim == 3:
            logits = constrain(logits, ("act_batch", "act_length", "act_vocab"))
        return logits

    def prefill(self, tokens: jax.Array, segment_ids: jax.Array, positions: jax.Array,
                cache: KVCache) -> tuple[jax.Array, KVCache]:
        """Runs a prompt batch [B, L] and writes its keys/values into cache slots 0..L-1."""
        x = self._embed(tokens)
        cache_k, cache_v = list(cache["k"]), list(cache["v"])
        for i, layer in enumerate(self.blocks()):
            x, k, v = layer(x, segment_ids, positions)
            cache_k[i], cache_v[i] = write_cache(cache_k[i], cache_v[i], k, v, 0)
        return self.final_norm(x), {"k": cache_k, "v": cache_v}

    def decode(self, tokens: jax.Array, positions: jax.Array, cache: KVCache, index: jax.Array,
               key_mask: jax.Array) -> tuple[jax.Array, KVCache]:
        """Hidden states [B, T, hidden] of new tokens [B, T] stored at cache slot `index`.

        `key_mask` bool [B, T, S] says which cache slots each new token sees. It must leave out
        slots index..index+T-1: they are written only after attention (the new tokens see each
        other causally from their own keys and values).
        The layers run unrolled, each writing its key and value into its cache in place (a
        scan would copy every layer's cache and weights out of stacked arrays).
        """
        x = self._embed(tokens)
        cache_k, cache_v = list(cache["k"]), list(cache["v"])
        for i, layer in enumerate(self.blocks()):
            x, cache_k[i], cache_v[i] = layer.decode(x, positions, cache_k[i], cache_v[i], index, key_mask)
        return self.final_norm(x), {"k": cache_k, "v": cache_v}

    @property
    def decode_layout(self) -> bool:
        """Whether the layers are held as a list of blocks (see `to_decode_layout`)."""
        return isinstance(self.layers, nnx.List)

    def to_decode_layout(self, weights: str = "float32") -> None:
        """Holds the layers as a list of fused blocks instead of stacked arrays (one copy of their weights).

        A decoding loop reads every layer's weights at every step. Sliced out of stacked
        arrays inside the loop they are copied per step (or, hoisted, per call: a fresh copy
        of all the weights); in this layout each matmul reads them where they lie, four
        matmuls per layer instead of seven (model/fused_block.py). Training keeps the
        stacked layout (its scan compiles once for all layers). `weights` is the dtype the
        kernels and the output projection are held in (model/decode_kernels.py); the tied
        word table too, since it is the output projection.
        """
        self.layers = nnx.List([FusedDecoderBlock(block, weights) for block in self.blocks()])
        if self.tied:
            self.embed = DecodeKernel(self.embed.embedding[...], ("vocab", "embed"), 1, weights)
        else:
            self.lm_head = DecodeKernel(self.lm_head.kernel[...].T, ("vocab", "embed"), 1, weights)

    def blocks(self) -> list[DecoderBlock | FusedDecoderBlock]:
        """The layers as separate blocks: as held, or static slices of the stacked arrays."""
        if self.decode_layout:
            return list(self.layers)
        graphdef, stacked = nnx.split(self.layers)
        return [nnx.merge(graphdef, nnx.spmd.remove_axis(state, 0, LAYERS_AXIS)) for state in unstack_layers(stacked)]

    def _embed(self, tokens: jax.Array) -> jax.Array:
        if isinstance(self.embed, DecodeKernel):
            x = self.embed.rows(tokens)
        else:
            x = lookup_rows(self.embed, tokens, ("act_vocab", None))
        return constrain(x, ("act_batch", "act_length", "act_embed"))  # float32 residual stream
