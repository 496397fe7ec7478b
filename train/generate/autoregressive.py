"""Autoregressive decoding under one jax.jit: prefill, then a while_loop over a KV-cached step.

Prompts are LEFT-padded to a bucket length P, so every row writes its next key/value at
the same cache slot (P + t) and the first new token of every row comes from slot P - 1;
each row's positions start at 0 on its first real token. One compile serves a
(batch, P, max new tokens, stop table) bucket: the prompts, their lengths, the seed, the
number of new tokens, the sampling settings (temperature, top-k, top-p) and the stop
sequences' token ids are all traced values.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from model.config import ModelConfig
from model.precision import compute_dtype
from model.kv_cache import KVCache, cache_logical_names, init_cache, num_slots
from model.sharding import constrain
from train.mesh import batch_sharding, replicated, sharding_context
from train.state import named_shardings, param_shardings as param_shardings_of

Params = Any


@dataclasses.dataclass(frozen=True)
class Prompts:
    """A left-padded prompt batch: tokens int32 [B, P] and each row's real length [B]."""

    tokens: np.ndarray
    lengths: np.ndarray


def bucket(n: int, minimum: int = 16) -> int:
    """The power of two >= n (at least `minimum`): the lengths that get their own compile."""
    return max(minimum, 1 << max(n - 1, 0).bit_length())


def left_pad(prompts: list[list[int]], length: int, pad_id: int) -> Prompts:
    """Packs token lists into a left-padded [B, length] batch (each list 1..length tokens)."""
    tokens = np.full((len(prompts), length), pad_id, np.int32)
    for row, ids in enumerate(prompts):
        tokens[row, length - len(ids):] = ids
    return Prompts(tokens, np.asarray([len(ids) for ids in prompts], np.int32))


def prompt_layout(tokens: jax.Array, lengths: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(segment ids, positions, first real slot) of a left-padded batch; padding is segment 0."""
    length = tokens.shape[1]
    start_B = length - lengths
    slots = jnp.arange(length)[None, :]
    segment_ids = (slots >= start_B[:, None]).astype(jnp.int32)
    positions = jnp.maximum(slots - start_B[:, None], 0).astype(jnp.int32)
    return segment_ids, positions, start_B


def prefill(model: nnx.Module, cfg: ModelConfig, tokens: jax.Array, lengths: jax.Array,
            cache_length: int) -> tuple[jax.Array, KVCache, jax.Array]:
    """Runs the prompts: (last-slot logits [B, V], filled cache, first real slot [B])."""
    segment_ids, positions, start_B = prompt_layout(tokens, lengths)
    cache = constrain_cache(init_cache(cfg, tokens.shape[0], cache_length), cfg)
    hidden, cache = model.prefill(tokens, segment_ids, positions, cache)
    return model.logits(hidden[:, -1]), constrain_cache(cache, cfg), start_B


def decode_one(model: nnx.Module, cfg: ModelConfig, token_B: jax.Array, cache: KVCache, slot: jax.Array,
               start_B: jax.Array) -> tuple[jax.Array, KVCache]:
    """Feeds one token per row, stored at cache `slot`: (logits [B, V], cache)."""
    slots = jnp.arange(num_slots(cache))
    key_mask = ((slots[None, :] >= start_B[:, None]) & (slots[None, :] < slot))[:, None, :]
    positions = (slot - start_B)[:, None]
    hidden, cache = model.decode(token_B[:, None], positions, cache, slot, key_mask)
    return model.logits(hidden[:, 0]), constrain_cache(cache, cfg)


def constrain_cache(cache: KVCache, cfg: ModelConfig) -> KVCache:
    """Pins the cache's layout like the activations (batch over data/fsdp, kv heads over tensor)."""
    names = cache_logical_names(cfg)
    return {name: [constrain(layer, names[name]) for layer in layers] for name, layers in cache.items()}


def sample(logits_BV: jax.Array, key: jax.Array, temperature: jax.Array, top_k: jax.Array,
           top_p: jax.Array) -> jax.Array:
    """Next tokens [B]: argmax when temperature <= 0, else a draw from the top-k / top-p filtered softmax."""

    def draw(_):
        scaled = logits_BV.astype(jnp.float32) / jnp.maximum(temperature, 1e-6)
        vocab = scaled.shape[-1]
        sorted_desc = -jnp.sort(-scaled, axis=-1)
        k = jnp.where(top_k > 0, jnp.clip(top_k, 1, vocab), vocab)
        kth = jnp.take(sorted_desc, k - 1, axis=-1)[:, None]
        # Top-p keeps the smallest prefix whose mass reaches top_p (always at least one token).
        cumulative = jnp.cumsum(jax.nn.softmax(sorted_desc, axis=-1), axis=-1)
        keep = jnp.sum(cumulative - jax.nn.softmax(sorted_desc, axis=-1) < top_p, axis=-1)
        pth = jnp.take_along_axis(sorted_desc, jnp.maximum(keep, 1)[:, None] - 1, axis=-1)
        filtered = jnp.where(scaled >= jnp.maximum(kth, pth), scaled, -jnp.inf)
        return jax.random.categorical(key, filtered, axis=-1).astype(jnp.int32)

    def greedy(_):
        return first_argmax(logits_BV)

    return jax.lax.cond(temperature > 0, draw, greedy, None)


def first_argmax(logits_BV: jax.Array) -> jax.Array:
    """jnp.argmax over the vocabulary (the first maximum; the first NaN if any), int32 [B].

    As a max reduce, then the smallest index holding it: on CPU ~2.5x faster than
    argmax's (value, index) reduce over 32k logits, ~0.1 ms (batch 1) to ~0.3 ms
    (batch 8) of each decode step of the benchmark decoder.
    """
    best = jnp.max(logits_BV, axis=-1, keepdims=True)
    index = jnp.arange(logits_BV.shape[-1], dtype=jnp.int32)
    hit = (logits_BV == best) | jnp.isnan(logits_BV)
    return jnp.min(jnp.where(hit, index, logits_BV.shape[-1]), axis=-1)


def no_stops() -> np.ndarray:
    """The stop table that never matches: generation ends at EOS or the token limit only."""
    return np.full((1, 1), -1, np.int32)


def stop_matches(recent_BT: jax.Array, count_B: jax.Array, stops_ST: jax.Array) -> jax.Array:
    """Bool [B]: a row's newest tokens equal one of the stop sequences.

    `stops_ST` holds one token sequence per row, right-aligned and left-padded with -1
    (an all -1 row is no sequence). A match needs at least one generated token before the
    sequence: a decoded text may drop the leading space of its first token, so only a
    sequence inside the text is sure to read as the stop string.
    """
    used_ST = stops_ST >= 0
    equal_BST = (recent_BT[:, None, :] == stops_ST[None, :, :]) | ~used_ST[None]
    length_S = jnp.sum(used_ST, axis=-1)
    hit_BS = jnp.all(equal_BST, axis=-1) & (length_S > 0)[None] & (count_B[:, None] > length_S[None])
    return jnp.any(hit_BS, axis=-1)


def generate(params: Params, tokens: jax.Array, lengths: jax.Array, seed: jax.Array,
             max_new_tokens: jax.Array, temperature: jax.Array, top_k: jax.Array, top_p: jax.Array,
             stops: jax.Array, *, graphdef: Any, cfg: ModelConfig, max_new_bucket: int, eos_id: int,
             pad_id: int) -> dict[str, jax.Array]:
    """Generates up to `max_new_tokens` (<= max_new_bucket) per row, stopping early once every row is done.

    A row is done at EOS or when its newest tokens equal a row of `stops` (int32 [S, T],
    see `stop_matches`). Returns tokens int32 [B, max_new_bucket] (pad after a row's end;
    EOS or the stop sequence included) and num_generated [B]. `params` are in the decoding
    layout (see `DecodeLayout`).
    """
    model = nnx.merge(graphdef, params)
    batch, prompt_len = tokens.shape
    logits, cache, start_B = prefill(model, cfg, tokens, lengths, prompt_len + max_new_bucket)
    key = jax.random.key(seed)
    first = sample(logits, jax.random.fold_in(key, 0), temperature, top_k, top_p)
    out = jnp.full((batch, max_new_bucket), pad_id, jnp.int32).at[:, 0].set(first)
    out = constrain(out, ("act_batch", "act_length"))
    done = first == eos_id
    count = jnp.ones((batch,), jnp.int32)
    # The newest tokens of each row, for the stop sequences; -1 before the first.
    recent = jnp.full((batch, stops.shape[1]), -1, jnp.int32).at[:, -1].set(first)

    def cond(carry):
        t, _, _, done, _, _, _ = carry
        return (t < max_new_tokens) & ~jnp.all(done)

    def body(carry):
        t, last, out, done, count, cache, recent = carry
        # Merged inside the loop: NNX modules may not cross into another trace level.
        logits, cache = decode_one(nnx.merge(graphdef, params), cfg, last, cache, prompt_len + t - 1, start_B)
        token = sample(logits, jax.random.fold_in(key, t), temperature, top_k, top_p)
        token = jnp.where(done, pad_id, token)
        out = jax.lax.dynamic_update_slice_in_dim(out, token[:, None], t, axis=1)
        count = count + (~done).astype(jnp.int32)
        recent = jnp.concatenate([recent[:, 1:], token[:, None]], axis=1)
        stopped = ~done & stop_matches(recent, count, stops)
        return t + 1, token, out, done | (token == eos_id) | stopped, count, cache, recent

    carry = (jnp.int32(1), first, out, done, count, cache, recent)
    _, _, out, _, count, _, _ = jax.lax.while_loop(cond, body, carry)
    return {"tokens": out, "num_generated": count}


@dataclasses.dataclass
class DecodeLayout:
    """Training params (stacked layers) to the decoding layout (a list of blocks), once per set of params.

    The decoding loop reads every layer's weights at every step; sliced from the stacked
    arrays inside the compiled loop they would be copied on every call. `convert` is jitted
    and remembers its latest result, so repeated calls with the same arrays reuse it (at the
    cost of holding one extra copy of the weights while those arrays are in use). `cfg` is
    the model config with the decoding compute dtype (the KV cache's and activations').
    """

    graphdef: Any
    shardings: Any
    convert_fn: Callable[[Params], Params]
    cfg: ModelConfig
    _latest: tuple[list, Params] | None = None

    def convert(self, params: Params) -> Params:
        """`params` in the decoding layout; the conversion runs once for the same arrays."""
        leaves = jax.tree.leaves(params)
        if self._latest is None or len(leaves) != len(self._latest[0]) or any(
                a is not b for a, b in zip(leaves, self._latest[0])):
            self._latest = (leaves, self.convert_fn(params))
        return self._latest[1]


def decoding_config(cfg: ModelConfig, dtype: str) -> ModelConfig:
    """`cfg` with the compute dtype of decoding with weights held in `dtype` (float32, bfloat16, int8)."""
    return dataclasses.replace(cfg, dtype=compute_dtype(dtype))


def decode_layout(graphdef: Any, param_shardings: Any, cfg: ModelConfig, mesh: Mesh,
                  dtype: str = "float32") -> DecodeLayout:
    """The decoding layout of the decoder whose training layout is (graphdef, param_shardings).

    `dtype` holds the kernels and the output projection in float32, bfloat16 or int8
    (model/decode_kernels.py); activations and the KV cache are then float32 or bfloat16.
    """
    decoding = decoding_config(cfg, dtype)
    if decoding != cfg:  # the same parameters, modules computing in the decoding dtype
        graphdef = param_shardings_of(decoding, mesh)[0]

    def to_decode(params: Params) -> nnx.Module:
        model = nnx.merge(graphdef, params)
        model.to_decode_layout(dtype)
        return model

    abstract = param_shardings_of(cfg, mesh)[1]
    with sharding_context(mesh):
        decode_graphdef, decode_state = nnx.split(nnx.eval_shape(to_decode, abstract))
        # The regrouped kernels carry their own logical names (model/fused_block.py).
        shardings = named_shardings(decode_state, mesh)

    def decode_params(params: Params) -> Params:
        return nnx.to_pure_dict(nnx.state(to_decode(params)))

    convert = jax.jit(decode_params, in_shardings=(param_shardings,), out_shardings=shardings)

    def convert_in_context(params: Params) -> Params:
        with sharding_context(mesh):
            return convert(params)

    return DecodeLayout(decode_graphdef, shardings, convert_in_context, decoding)


def compile_generate(graphdef: Any, param_shardings: Any, cfg: ModelConfig, mesh: Mesh, *,
                     max_new_bucket: int, eos_id: int, pad_id: int, dtype: str = "float32") -> Callable[..., dict]:
    """`generate` under jax.jit: params as laid out for training, prompt rows over data/fsdp.

    Call as fn(params, tokens [B, P], lengths [B], seed, max_new_tokens, temperature, top_k, top_p,
    stops): `stops` (int32 [S, T], see `stop_matches`) defaults to none; each (S, T) shape is
    its own compile, so callers bucket it.
    The params are converted to the decoding layout on the first call with them (`DecodeLayout`),
    with the kernels held in `dtype` (float32, bfloat16 or int8; see `decode_layout`).
    `fn.lower(...)`, with the same arguments, gives the jax.stages.Lowered program (it converts
    the params too); `fn.layout` is the `DecodeLayout`.
    """
    layout = decode_layout(graphdef, param_shardings, cfg, mesh, dtype)
    rows = batch_sharding(mesh)
    scalar = replicated(mesh)
    jitted = jax.jit(
        functools.partial(generate, graphdef=layout.graphdef, cfg=layout.cfg, max_new_bucket=max_new_bucket,
                          eos_id=eos_id, pad_id=pad_id),
        in_shardings=(layout.shardings, rows, rows, scalar, scalar, scalar, scalar, scalar, scalar),
        out_shardings={"tokens": rows, "num_generated": rows})

    def arguments(params, tokens, lengths, seed=0, max_new_tokens=None, temperature=0.0, top_k=0, top_p=1.0,
                  stops=None):
        return (layout.convert(params), tokens, lengths, np.int32(seed),
                np.int32(max_new_bucket if max_new_tokens is None else max_new_tokens),
                np.float32(temperature), np.int32(top_k), np.float32(top_p),
                no_stops() if stops is None else np.asarray(stops, np.int32))

    @functools.wraps(jitted)
    def run(*args, **kwargs):
        with sharding_context(mesh):
            return jitted(*arguments(*args, **kwargs))

    def lower(*args, **kwargs):
        with sharding_context(mesh):
            return jitted.lower(*arguments(*args, **kwargs))

    run.lower = lower
    run.layout = layout
    return run
