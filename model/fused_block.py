"""A decoder layer's weights regrouped for decoding: one q/k/v matmul and one gate/up matmul.

A decode step multiplies one token per row by every weight, so it is bound by reading
the weights; seven matmuls per layer (q, k, v, out, gate, up, down) become four. The
groups keep tensor parallelism intact: q/k/v are grouped per key/value head
([kv_heads, group + 2, head_dim, embed]: that head's queries, then its key and value)
and gate/up per MLP unit ([2, mlp, embed]), so sharding the head or MLP axis keeps each
group on one device.

Kernels are held [out, in] as `DecodeKernel`s (model/decode_kernels.py), in float32,
bfloat16 or int8: in float32 each matmul is written weight first (`W x^T`, then the small
result transposed), so XLA:CPU streams every kernel row by row as it lies. At 8 rows per
step that form reads weights ~1.7x faster than `x W` with [in, out] kernels (and as fast
at 1 row); `x W^T` with the same [out, in] kernels sits in between, and a kernel whose
contracted axis is not its last one gets a transposing copy per step.
`FusedDecoderBlock(block, weights)` builds it from a trained `DecoderBlock` (the same
numbers, regrouped, with any LoRA adapters merged into their kernels, held in `weights`);
training never sees this layout. The decoder holds its output projection (the tied word
table or an untied LM head) the same way.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from model.attention import cached_attention, self_attention
from model.block import DecoderBlock
from model.decode_kernels import DecodeKernel
from model.kv_cache import write_cache
from model.lora import merged_kernel
from model.precision import compute_dtype
from model.rope import apply_rope
from model.sharding import constrain


class FusedDecoderBlock(nnx.Module):
    """The Llama layer of `DecoderBlock` with fused kernels; same outputs, inference only."""

    def __init__(self, block: DecoderBlock, weights: str = "float32"):
        attention, mlp = block.attention, block.mlp
        q, k, v = (merged_kernel(p) for p in (attention.query, attention.key, attention.value))  # [D, heads, Dh]
        hidden, num_heads, head_dim = q.shape
        num_kv_heads = k.shape[1]
        grouped = q.reshape(hidden, num_kv_heads, num_heads // num_kv_heads, head_dim)
        qkv = jnp.concatenate([grouped, k[:, :, None], v[:, :, None]], axis=2)  # [D, K, G+2, Dh]
        kv_name = "kv_heads" if num_kv_heads != num_heads else "heads"
        self.qkv = DecodeKernel(jnp.transpose(qkv, (1, 2, 3, 0)), (kv_name, None, "head_dim", "embed"), 1,
                                weights)  # [K, G+2, Dh, D]
        self.out = DecodeKernel(jnp.transpose(merged_kernel(attention.out), (2, 0, 1)),
                                ("embed", "heads", "head_dim"), 2, weights)
        self.gate_up = DecodeKernel(jnp.stack([merged_kernel(mlp.gate).T, merged_kernel(mlp.up).T]),
                                    (None, "mlp", "embed"), 1, weights)
        self.down = DecodeKernel(merged_kernel(mlp.down).T, ("embed", "mlp"), 1, weights)
        self.attention_norm, self.mlp_norm = block.attention_norm, block.mlp_norm
        self.kv_act_name = attention.kv_act_name
        self.attention_impl, self.max_segments = attention.attention_impl, attention.max_segments
        self.rope_theta = attention.rope_theta

    def __call__(self, x: jax.Array, segment_ids: jax.Array, positions: jax.Array, *,
                 dropout_key: jax.Array | None = None) -> tuple[jax.Array, jax.Array, jax.Array]:
        """As `DecoderBlock.__call__` (no dropout in this layout; a prefill runs the fused kernel
        where the platform has one): (x, keys, values [B, L, K, D])."""
        del dropout_key
        q, k, v = self._project(x, positions)
        out = self_attention(q, k, v, segment_ids, causal=True, impl=self.attention_impl,
                             max_segments=self.max_segments, kv_heads_name=self.kv_act_name)
        return self._mlp_residual(self._residual_attention(x, out)), k, v

    def decode(self, x: jax.Array, positions: jax.Array, cache_k: jax.Array, cache_v: jax.Array,
               index: jax.Array, key_mask: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        """As `DecoderBlock.decode`: attend to the cache and the new tokens, then write them at slot `index`."""
        q, k, v = self._project(x, positions)
        out = cached_attention(q, k, v, cache_k, cache_v, key_mask)
        x = self._residual_attention(x, out)
        cache_k, cache_v = write_cache(cache_k, cache_v, k, v, index, after=out)
        return self._mlp_residual(x), cache_k, cache_v

    def _project(self, x: jax.Array, positions: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        """q [B, L, H, D] and k, v [B, L, K, D], rotated by `positions`."""
        h = self.attention_norm(x)
        qkv = self.qkv(h)
        batch, length, num_kv_heads, slots, head_dim = qkv.shape  # slots: the group's queries, key, value
        q = qkv[:, :, :, :slots - 2].reshape(batch, length, num_kv_heads * (slots - 2), head_dim)
        q = constrain(q, ("act_batch", "act_length", "act_heads", "act_head_dim"))
        kv_names = ("act_batch", "act_length", self.kv_act_name, "act_head_dim")
        k = constrain(qkv[:, :, :, slots - 2], kv_names)
        v = constrain(qkv[:, :, :, slots - 1], kv_names)
        if self.rope_theta:
            q, k = apply_rope(q, positions, self.rope_theta), apply_rope(k, positions, self.rope_theta)
        return q, k, v

    def _residual_attention(self, x: jax.Array, out: jax.Array) -> jax.Array:
        """x plus the attention output [B, L, H, D] projected back to the residual stream (float32)."""
        out = constrain(out, ("act_batch", "act_length", "act_heads", "act_head_dim"))
        h = self.out(out)
        return x.astype(jnp.float32) + constrain(h, ("act_batch", "act_length", "act_embed")).astype(jnp.float32)

    def _mlp_residual(self, x: jax.Array) -> jax.Array:
        h = self.mlp_norm(x)
        gate_up = self.gate_up(h, jnp.float32)
        h = jax.nn.silu(gate_up[:, :, 0]) * gate_up[:, :, 1]
        h = constrain(h.astype(compute_dtype(self.down.weights)), ("act_batch", "act_length", "act_mlp"))
        h = self.down(h)
        x = x + constrain(h, ("act_batch", "act_length", "act_embed")).astype(jnp.float32)
        return constrain(x, ("act_batch", "act_length", "act_embed"))
