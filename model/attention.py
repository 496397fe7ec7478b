"""Self-attention over packed rows: one entry point, three kernels, masks from segment ids.

Built for both model families: `causal` switches the mask to left-to-right and
`num_kv_heads < num_heads` gives grouped-query attention (each key/value head serves
`num_heads // num_kv_heads` query heads). `self_attention` takes the packed inputs
(q, k, v and segment ids) and runs the kernel `attention_backend` picks: the XLA einsum
path here (the reference; the only one that builds an [L, L] mask), Splash attention
(model/splash.py, TPU) or cuDNN flash attention (model/cudnn.py, GPU). Decoding over a
KV cache (`cached_attention`) stays on the XLA path.

With the length sharded over a sequence axis, queries stay split along it and keys and
values are gathered whole (`act_kv_length`): every query sees every key it may attend to.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from model import lora, precision
from model.config import ATTENTION_IMPLS, LoraConfig, cudnn_misfit
from model.cudnn import cudnn_attention
from model.dropout import dropout, site_key
from model.kv_cache import LAYOUT as CACHE_LAYOUT, cache_values
from model.rope import apply_rope
from model.sharding import constrain, logical_spec, mesh_axes_size, param_init
from model.splash import splash_attention

# Fill for masked logits: softmax runs in float32, where this underflows exp() to zero.
MASKED_LOGIT = float(jnp.finfo(jnp.float32).min)


def attention_mask(segment_ids_q: jax.Array, segment_ids_k: jax.Array, causal: bool = False) -> jax.Array:
    """Which keys each query may see, bool [B, 1, Lq, Lk]: same segment (and not later, if causal).

    Padding (segment 0) attends to padding, so its softmax stays defined; its outputs
    are ignored downstream.
    """
    mask = segment_ids_q[:, :, None] == segment_ids_k[:, None, :]
    if causal:
        q_index = jnp.arange(segment_ids_q.shape[1])[:, None]
        k_index = jnp.arange(segment_ids_k.shape[1])[None, :]
        mask = mask & (q_index >= k_index)[None]
    return mask[:, None]


def dot_product_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array, *,
                          dropout_rate: float = 0.0, dropout_key: jax.Array | None = None) -> jax.Array:
    """softmax(q k^T / sqrt(d)) v with float32 softmax; q [B,L,H,D], k/v [B,S,K,D] -> [B,L,H,D]."""
    # XLA:CPU's bf16 kernels take only row-major products. (With the length split over a
    # sequence axis its head-major copies became all-to-alls that hung 8 simulated devices.)
    if precision.cpu_bf16_kernels(q.dtype) and not length_is_sharded():
        return precision.cpu_bf16_attention(q, k, v, mask[:, :, None], MASKED_LOGIT, dropout_rate, dropout_key)
    batch, length, num_heads, head_dim = q.shape
    q = q.reshape(batch, length, k.shape[2], num_heads // k.shape[2], head_dim)
    scores = jnp.einsum("blkgd,bskd->bkgls", q, k, preferred_element_type=jnp.float32)
    scores = scores * (head_dim ** -0.5)
    scores = jnp.where(mask[:, :, None], scores, MASKED_LOGIT)  # mask [B,1,1,L,S]
    probs = jax.nn.softmax(scores, axis=-1)
    probs = dropout(probs, dropout_rate, dropout_key)
    out = jnp.einsum("bkgls,bskd->blkgd", probs.astype(v.dtype), v)
    return out.reshape(batch, length, num_heads, head_dim)


def attention_backend(impl: str, *, dtype: str | jnp.dtype, dropout_rate: float, head_dim: int,
                      length_sharded: bool = False, platform: str | None = None) -> str:
    """The kernel that runs for `impl`: itself, or for auto Splash on TPU, cuDNN on GPU, else XLA.

    auto keeps the XLA path where the fused kernel cannot run the model: with attention
    dropout (neither kernel has it) and where `cudnn_misfit` says cuDNN cannot.
    """
    if impl not in ATTENTION_IMPLS:
        raise ValueError(f"attention_impl={impl!r}; accepted: {', '.join(ATTENTION_IMPLS)}")
    if impl != "auto":
        return impl
    platform = platform or jax.default_backend()
    if dropout_rate > 0:
        return "xla"
    if platform == "tpu":
        return "splash"
    if platform in ("gpu", "cuda") and cudnn_misfit(jnp.dtype(dtype).name, head_dim, length_sharded) is None:
        return "cudnn"
    return "xla"


def length_is_sharded() -> bool:
    """Whether the active rules split activations along the length (a sequence axis above 1)."""
    spec = logical_spec(("act_length",))
    return spec is not None and mesh_axes_size(spec[0]) > 1


def self_attention(q: jax.Array, k: jax.Array, v: jax.Array, segment_ids: jax.Array, *, causal: bool,
                   impl: str = "auto", max_segments: int = 32, kv_heads_name: str = "act_kv_heads",
                   dropout_rate: float = 0.0, dropout_key: jax.Array | None = None) -> jax.Array:
    """Attention within each packed document by the kernel `impl` picks; q [B,L,H,D], k/v [B,L,K,D] -> [B,L,H,D].

    Every kernel sees the same inputs and gives the same outputs (within float tolerance)
    on every real token; padding (segment 0) outputs feed nothing but padding.
    """
    backend = attention_backend(impl, dtype=q.dtype, dropout_rate=dropout_rate, head_dim=q.shape[-1],
                                length_sharded=length_is_sharded())
    if backend != "xla" and dropout_rate > 0 and dropout_key is not None:
        raise ValueError(f"attention_impl={backend} has no attention dropout; set attention_dropout=0 or use xla")
    if backend == "splash":
        return splash_attention(q, k, v, segment_ids, causal=causal)
    if backend == "cudnn":
        return cudnn_attention(q, k, v, segment_ids, causal=causal, max_segments=max_segments)
    whole = ("act_batch", "act_kv_length", kv_heads_name, "act_head_dim")  # gathered over a sequence axis
    k, v = constrain(k, whole), constrain(v, whole)
    mask = attention_mask(segment_ids, constrain(segment_ids, ("act_batch", "act_kv_length")), causal)
    return dot_product_attention(q, k, v, mask, dropout_rate=dropout_rate, dropout_key=dropout_key)


def cached_attention(q: jax.Array, k: jax.Array, v: jax.Array, cache_k: jax.Array, cache_v: jax.Array,
                     cache_mask: jax.Array) -> jax.Array:
    """Attention of new tokens over a KV cache and, causally, over themselves -> [B,T,H,D].

    q [B,T,H,D]; the new tokens' own k, v [B,T,K,D] are not in the cache yet; one softmax
    runs over the cache slots `cache_mask` [B,T,S] allows (never the slots k and v will
    take: they still hold stale values), then the new tokens. The cache is only read here
    (layout: model/kv_cache.py): the caller writes k and v afterwards with
    `write_cache(..., after=out)`, whose data dependency on this output lets XLA update the
    cache in place (without it, or attending after writing, XLA copied every layer's cache
    at every step).

    Both products with the cache are a broadcast multiply summed over a non-minor axis
    (head_dim of keys held [head_dim, length], length of values held [length, head_dim]),
    which XLA:CPU fuses into loops vectorized along the minor axis: for a few query heads
    per key/value head that beat its batched matmuls (~20% of attention time at batch 8).
    """
    batch, length, num_heads, head_dim = q.shape
    num_kv_heads = k.shape[2]
    f32 = jnp.float32
    q = jnp.einsum("btkgd->bkgtd", q.reshape(batch, length, num_kv_heads, num_heads // num_kv_heads, head_dim))
    keys = jnp.einsum(f"{CACHE_LAYOUT['k']}->bkds", cache_values(cache_k))[:, :, None, None].astype(f32)  # [B,K,1,1,D,S]
    cached = jnp.sum(q[..., None].astype(f32) * keys, axis=-2)  # [B,K,G,T,S]
    new = jnp.einsum("bkgtd,bskd->bkgts", q, k, preferred_element_type=f32)
    causal = jnp.arange(length)[:, None] >= jnp.arange(length)[None, :]
    scale = head_dim ** -0.5
    scores = jnp.concatenate([jnp.where(cache_mask[:, None, None], cached * scale, MASKED_LOGIT),
                              jnp.where(causal, new * scale, MASKED_LOGIT)], axis=-1)
    probs = jax.nn.softmax(scores, axis=-1)
    slots = cached.shape[-1]
    values = jnp.einsum(f"{CACHE_LAYOUT['v']}->bksd", cache_values(cache_v))[:, :, None, None].astype(f32)  # [B,K,1,1,S,D]
    out = jnp.sum(probs[..., :slots, None] * values, axis=-2)  # [B,K,G,T,D]
    out = out + jnp.einsum("bkgts,bskd->bkgtd", probs[..., slots:], v.astype(f32))
    return jnp.einsum("bkgtd->btkgd", out).reshape(batch, length, num_heads, head_dim).astype(v.dtype)


def _head_projection(hidden: int, heads: int, head_dim: int, heads_name: str, *, init_std: float,
                     use_bias: bool, dtype: jnp.dtype, param_dtype: jnp.dtype, rngs: nnx.Rngs) -> precision.Einsum:
    """hidden -> [heads, head_dim] (bias optional); kernel reshapes to HF's [heads*head_dim, hidden]."""
    return precision.Einsum(
        "bld,dhk->blhk", (hidden, heads, head_dim), (heads, head_dim) if use_bias else None,
        kernel_init=param_init(nnx.initializers.normal(init_std), ("embed", heads_name, "head_dim")),
        bias_init=param_init(nnx.initializers.zeros_init(), (heads_name, "head_dim")),
        dtype=dtype, param_dtype=param_dtype, rngs=rngs)


class Attention(nnx.Module):
    """Multi-head (or grouped-query) self-attention; biases (BERT), RoPE (Llama) and LoRA adapters optional.

    `lora_cfg` gives the projections it targets (q, k, v, o) an adapter (model/lora.py), whose
    input dropout is keyed from the attention's dropout key.
    """

    def __init__(self, hidden: int, num_heads: int, head_dim: int, *, num_kv_heads: int = 0,
                 causal: bool = False, dropout_rate: float = 0.0, init_std: float = 0.02,
                 use_bias: bool = True, rope_theta: float = 0.0, attention_impl: str = "auto",
                 max_segments: int = 32, dtype: jnp.dtype = jnp.float32,
                 param_dtype: jnp.dtype = jnp.float32, lora_cfg: LoraConfig | None = None, rngs: nnx.Rngs):
        num_kv_heads = num_kv_heads or num_heads
        if num_heads % num_kv_heads:
            raise ValueError(f"num_heads={num_heads} is not a multiple of num_kv_heads={num_kv_heads}")
        grouped = num_kv_heads != num_heads
        # Plain multi-head k/v shard like q; grouped k/v have their own (smaller) axis.
        kv_name = "kv_heads" if grouped else "heads"
        self.kv_act_name = "act_kv_heads" if grouped else "act_heads"
        common = dict(init_std=init_std, use_bias=use_bias, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.query = _head_projection(hidden, num_heads, head_dim, "heads", **common)
        self.key = _head_projection(hidden, num_kv_heads, head_dim, kv_name, **common)
        self.value = _head_projection(hidden, num_kv_heads, head_dim, kv_name, **common)
        self.out = precision.Einsum(
            "blhk,hkd->bld", (num_heads, head_dim, hidden), (hidden,) if use_bias else None,
            kernel_init=param_init(nnx.initializers.normal(init_std), ("heads", "head_dim", "embed")),
            bias_init=param_init(nnx.initializers.zeros_init(), ("embed",)),
            dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        if lora_cfg is not None and lora_cfg.rank:
            names = {"q": (self.query, ("embed",), ("heads", "head_dim")),
                     "k": (self.key, ("embed",), (kv_name, "head_dim")),
                     "v": (self.value, ("embed",), (kv_name, "head_dim")),
                     "o": (self.out, ("heads", "head_dim"), ("embed",))}
            for target in lora_cfg.targets:
                if target in names:
                    lora.attach(*names[target], lora_cfg, rngs)
        self.causal = causal
        self.dropout_rate = dropout_rate
        self.rope_theta = rope_theta
        self.attention_impl = attention_impl
        self.max_segments = max_segments

    def __call__(self, x: jax.Array, segment_ids: jax.Array, *, positions: jax.Array | None = None,
                 dropout_key: jax.Array | None = None) -> jax.Array:
        """Attends within each packed document of a row; x [B, L, hidden] -> [B, L, hidden]."""
        return self.attend_with_kv(x, segment_ids, positions=positions, dropout_key=dropout_key)[0]

    def attend_with_kv(self, x: jax.Array, segment_ids: jax.Array, *, positions: jax.Array | None = None,
                       dropout_key: jax.Array | None = None) -> tuple[jax.Array, jax.Array, jax.Array]:
        """Self-attention output [B, L, hidden] and the (rotated) keys and values [B, L, K, D]."""
        adapter_key = site_key(dropout_key, 1)  # the probabilities' dropout uses dropout_key itself
        q, k, v = self.project(x, positions, adapter_key)
        out = self.attend(q, k, v, segment_ids, dropout_key=dropout_key)
        return self.project_out(out, adapter_key), k, v

    def project(self, x: jax.Array, positions: jax.Array | None,
                adapter_key: jax.Array | None = None) -> tuple[jax.Array, jax.Array, jax.Array]:
        """q [B, L, H, D] and k, v [B, L, K, D], rotated by `positions` when RoPE is on."""
        q = constrain(lora.project(self.query, x, adapter_key, 0), ("act_batch", "act_length", "act_heads", "act_head_dim"))
        kv_names = ("act_batch", "act_length", self.kv_act_name, "act_head_dim")
        k = constrain(lora.project(self.key, x, adapter_key, 1), kv_names)
        v = constrain(lora.project(self.value, x, adapter_key, 2), kv_names)
        if self.rope_theta:
            q, k = apply_rope(q, positions, self.rope_theta), apply_rope(k, positions, self.rope_theta)
        return q, k, v

    def attend(self, q: jax.Array, k: jax.Array, v: jax.Array, segment_ids: jax.Array, *,
               dropout_key: jax.Array | None = None) -> jax.Array:
        """Self-attention outputs [B, L, H, D] of projected q, k, v by this layer's kernel."""
        return self_attention(q, k, v, segment_ids, causal=self.causal, impl=self.attention_impl,
                              max_segments=self.max_segments, kv_heads_name=self.kv_act_name,
                              dropout_rate=self.dropout_rate, dropout_key=dropout_key)

    def project_out(self, out: jax.Array, adapter_key: jax.Array | None = None) -> jax.Array:
        """Attention outputs [B, L, H, D] -> [B, L, hidden]."""
        out = constrain(out, ("act_batch", "act_length", "act_heads", "act_head_dim"))
        return constrain(lora.project(self.out, out, adapter_key, 3), ("act_batch", "act_length", "act_embed"))
