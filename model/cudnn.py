"""cuDNN flash attention (GPU) over packed rows, with the documents as cuDNN's packed layout.

`jax.nn.dot_product_attention(..., implementation="cudnn")` takes a mask only as an array
[B, 1, L, L] (which it turns into a bias) and sequence lengths only for one document per
row. The cuDNN function it calls also takes the packed ("ragged") layout: for each row,
where each document starts and how long it is. jax.nn does not pass that through, so this
module calls that function (`jax._src.cudnn.fused_attention_stablehlo`, private in jax
0.10.2; AXLearn does the same) with the documents as offsets and lengths: no [L, L] mask.

The kernel is built for at most `max_segments` documents per row (`model.max_segments_per_row`;
train/ checks the packed data against it before training). Padding (segment 0) belongs to
no document; cuDNN leaves its outputs undefined, so they are set to zero here (the XLA path
lets padding attend to padding: those outputs feed nothing but padding). cuDNN computes in
bf16 or fp16 only, and its partitioning splits the batch and the heads, never the length.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax._src.cudnn.fused_attention_stablehlo import MaskType
from jax._src.cudnn.fused_attention_stablehlo import dot_product_attention as cudnn_dot_product_attention


def packed_segments(segment_ids: jax.Array, max_segments: int) -> tuple[jax.Array, jax.Array]:
    """cuDNN's packed layout of rows of segment ids [B, L]: lengths [B, M] and starts [B, M + 1].

    A document is a run of one non-zero id; the i-th run of a row has its start at
    `starts[b, i]` and its length at `lengths[b, i]`; unused entries are -1 (as cuDNN asks).
    Runs past the M-th are left out: the caller makes sure there are none.
    """
    batch, length = segment_ids.shape
    inside = segment_ids != 0
    previous = jnp.pad(segment_ids[:, :-1], ((0, 0), (1, 0)), constant_values=0)
    begins = inside & (segment_ids != previous)
    run = jnp.cumsum(begins, axis=1) - 1  # which document of the row each token belongs to
    rows = jnp.arange(batch)[:, None]
    counted = jnp.where(inside & (run < max_segments), run, max_segments)  # slot M: not counted
    sizes = jnp.zeros((batch, max_segments + 1), jnp.int32).at[rows, counted].add(1)[:, :max_segments]
    lengths = jnp.where(sizes > 0, sizes, -1)
    first = jnp.where(begins & (run < max_segments), run, max_segments + 1)  # slot M + 1: dropped
    index = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (batch, length))
    starts = jnp.full((batch, max_segments + 2), -1, jnp.int32).at[rows, first].set(index)[:, :max_segments + 1]
    return lengths.astype(jnp.int32), starts


def cudnn_attention(q: jax.Array, k: jax.Array, v: jax.Array, segment_ids: jax.Array, *, causal: bool,
                    max_segments: int) -> jax.Array:
    """softmax(q k^T / sqrt(d)) v inside each document (and causal) by cuDNN: q [B,L,H,D], k/v [B,L,K,D]."""
    # With one segment per row cuDNN ignores the starts (a left-padded prompt starts late): keep two.
    lengths, starts = packed_segments(segment_ids, max(2, max_segments))
    out = cudnn_dot_product_attention(
        q, k, v, q_seqlen=lengths, kv_seqlen=lengths, q_offsets=starts, kv_offsets=starts,
        scale=q.shape[-1] ** -0.5, mask_type=MaskType.PADDING_CAUSAL if causal else MaskType.PADDING,
        qkv_layout="BTNH")
    return jnp.where((segment_ids > 0)[:, :, None, None], out, jnp.zeros((), out.dtype))
