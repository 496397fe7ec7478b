"""Splash attention (Pallas, TPU) over packed rows, run per shard of the mesh.

The kernel takes segment ids and a causal or full mask and never holds an [L, L] array:
it walks [block_q, block_kv] tiles, skipping those the mask rules out. It does not scale
queries, so q is scaled here. Off TPU it runs in Pallas's interpret mode (slow, exact):
that is how the tests run it on CPU.

XLA cannot partition the kernel, so it runs inside `shard_map` with the layout the
logical rules give the activations: rows over the batch axes, query and key/value heads
over the heads axes, queries over the length axes. Keys, values and their segment ids
enter whole along the length, so shard_map's input all-gathers them over the sequence
axis (context parallelism, as MaxText does it). The kernel's mask info is built for the
whole [L, L] mask, split by `head_shards` and `q_seq_shards`, and handed to each shard
with it (`manual_sharding_spec`), so a shard's causal mask knows its global positions. A
full (bidirectional) mask is the same for every query shard, so it is built for one (jax
0.10.2 cannot split a mask with no partial blocks over query shards).
A dimension that does not divide over its axes runs whole on every device instead.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as kernel_lib
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as mask_lib
from jax.sharding import NamedSharding, PartitionSpec

from model.sharding import logical_spec, mesh_axes_size

# Block sizes are multiples of the TPU's 128 lanes; rows are padded up to one.
LANES = 128
# Segment id of the padding added to reach a whole block: equal to no real id (real ids are >= 0).
_PAD_SEGMENT = -1


def splash_attention(q: jax.Array, k: jax.Array, v: jax.Array, segment_ids: jax.Array, *,
                     causal: bool) -> jax.Array:
    """softmax(q k^T / sqrt(d)) v inside each segment (and causal): q [B,L,H,D], k/v [B,L,K,D] -> [B,L,H,D]."""
    head_dim, length = q.shape[-1], q.shape[1]
    q = (q.astype(jnp.float32) * head_dim ** -0.5).astype(q.dtype)
    q, k, v = (jnp.swapaxes(x, 1, 2) for x in (q, k, v))  # [B, heads, L, D]: the kernel's layout
    batch_axes, head_axes, length_axes = _shard_axes(q.shape, k.shape[1])
    interpret = jax.default_backend() != "tpu"
    padded = length + (-length % LANES if length_axes is None else 0)  # split lengths are whole blocks
    if batch_axes is None and head_axes is None and length_axes is None:
        kernel = _kernel(q.shape[1], padded, padded, causal, 1, 1, interpret)
        return jnp.swapaxes(_attend(kernel, q, k, v, segment_ids, segment_ids), 1, 2)
    heads, queries = mesh_axes_size(head_axes), mesh_axes_size(length_axes)
    if causal:  # the mask depends on global positions: built whole, split with the queries
        kernel = _kernel(q.shape[1], padded, padded, True, heads, queries, interpret)
        kernel_axes = PartitionSpec(head_axes, length_axes)
    else:  # the same for every query shard: built for one
        kernel = _kernel(q.shape[1], padded // queries, padded, False, heads, 1, interpret)
        kernel_axes = PartitionSpec(head_axes, None)
    mesh = jax.sharding.get_abstract_mesh()
    q_spec = PartitionSpec(batch_axes, head_axes, length_axes, None)
    kv_spec = PartitionSpec(batch_axes, head_axes, None, None)  # whole along the length: gathered
    sharded = jax.shard_map(
        _attend, mesh=mesh, check_vma=False,
        in_specs=(kernel.manual_sharding_spec(NamedSharding(mesh, kernel_axes)), q_spec, kv_spec, kv_spec,
                  PartitionSpec(batch_axes, length_axes), PartitionSpec(batch_axes, None)),
        out_specs=q_spec)
    return jnp.swapaxes(sharded(kernel, q, k, v, segment_ids, segment_ids), 1, 2)


def _attend(kernel: kernel_lib.SplashAttentionKernel, q: jax.Array, k: jax.Array, v: jax.Array,
            q_segments: jax.Array, kv_segments: jax.Array) -> jax.Array:
    """One shard: the kernel over its rows (vmapped), padded to whole blocks when unsharded along L."""
    q_len, kv_len = q.shape[2], k.shape[2]
    pad = -kv_len % LANES
    if pad and q_len == kv_len:  # only ever unsharded rows: sharded ones are whole blocks (`_shard_axes`)
        q, k, v = (jnp.pad(x, ((0, 0), (0, 0), (0, pad), (0, 0))) for x in (q, k, v))
        q_segments, kv_segments = (jnp.pad(s, ((0, 0), (0, pad)), constant_values=_PAD_SEGMENT)
                                   for s in (q_segments, kv_segments))

    def one_row(q, k, v, q_ids, kv_ids):
        return kernel(q, k, v, segment_ids=kernel_lib.SegmentIds(q=q_ids, kv=kv_ids))

    out = jax.vmap(one_row)(q, k, v, q_segments, kv_segments)
    return out[:, :, :q_len]


def _shard_axes(q_shape: tuple[int, ...], num_kv_heads: int) -> tuple:
    """Mesh axes of the batch, heads and query length under the active rules (None: not split).

    Axes of size 1 count as not split. A dimension that does not split evenly (or, for the
    length, into whole blocks) stays whole; key/value heads split with the query heads, or
    grouped heads would lose their keys.
    """
    spec = logical_spec(("act_batch", "act_heads", "act_length"))
    if spec is None:
        return None, None, None
    batch, heads, length = (tuple(spec) + (None,) * 3)[:3]
    num_batch, num_heads, q_len, _ = q_shape
    ways = mesh_axes_size(batch)
    if ways == 1 or num_batch % ways:
        batch = None
    ways = mesh_axes_size(heads)
    if ways == 1 or num_heads % ways or num_kv_heads % ways:
        heads = None
    ways = mesh_axes_size(length)
    if ways == 1 or q_len % ways or (q_len // ways) % LANES:
        length = None
    return batch, heads, length


def _block(length: int) -> int:
    """The largest of 512, 256, 128 that divides `length` (a multiple of 128)."""
    return next(size for size in (512, 256, LANES) if length % size == 0)


@functools.lru_cache(maxsize=32)
def _kernel(num_heads: int, q_len: int, kv_len: int, causal: bool, head_shards: int, q_seq_shards: int,
            interpret: bool) -> kernel_lib.SplashAttentionKernel:
    """The Splash kernel for queries [q_len] over keys [kv_len] (whole 128-token blocks).

    Built with concrete mask info (never tracers of the trace that first asks), so that
    one kernel serves every later trace.
    """
    mask_type = mask_lib.CausalMask if causal else mask_lib.FullMask
    mask = mask_lib.MultiHeadMask([mask_type((q_len, kv_len)) for _ in range(num_heads)])
    bq, bkv = _block(q_len // q_seq_shards), _block(kv_len)
    sizes = kernel_lib.BlockSizes(block_q=bq, block_kv=bkv, block_kv_compute=bkv, block_q_dkv=bq,
                                  block_kv_dkv=bkv, block_kv_dkv_compute=bkv, block_q_dq=bq, block_kv_dq=bkv)
    with jax.ensure_compile_time_eval():
        return kernel_lib.make_splash_mha(mask, block_sizes=sizes, head_shards=head_shards,
                                          q_seq_shards=q_seq_shards, interpret=interpret)
