"""Beam search under one jax.jit, on the same prefill and cached decode step as sampling.

Each prompt keeps `beam_width` hypotheses ranked by summed log-probability; a finished
hypothesis (EOS emitted) only extends with padding at no cost. At the end each
hypothesis is scored sum_logprob / length ** length_penalty and the best one returned.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from model.config import ModelConfig
from train.generate.autoregressive import constrain_cache, decode_layout, decode_one, prefill
from train.mesh import batch_sharding, replicated, sharding_context


def beam_search(params: Any, tokens: jax.Array, lengths: jax.Array, max_new_tokens: jax.Array,
                length_penalty: jax.Array, *, graphdef: Any, cfg: ModelConfig, beam_width: int,
                max_new_bucket: int, eos_id: int, pad_id: int) -> dict[str, jax.Array]:
    """Best hypothesis per prompt: tokens [B, max_new_bucket], num_generated [B], log_prob [B]."""
    batch, prompt_len = tokens.shape
    width = beam_width
    logits, cache, start_B = prefill(nnx.merge(graphdef, params), cfg, tokens, lengths,
                                     prompt_len + max_new_bucket)
    # Beams are rows b * width + w; all start from the prompt's cache, only beam 0 alive.
    cache = constrain_cache(jax.tree.map(lambda c: jnp.repeat(c, width, axis=0), cache), cfg)
    start = jnp.repeat(start_B, width)
    scores = jnp.tile(jnp.where(jnp.arange(width) == 0, 0.0, -jnp.inf), (batch, 1))
    out = jnp.full((batch, width, max_new_bucket), pad_id, jnp.int32)
    done = jnp.zeros((batch, width), bool)
    count = jnp.zeros((batch, width), jnp.int32)
    log_probs = jnp.repeat(jax.nn.log_softmax(logits.astype(jnp.float32)), width, axis=0)

    def extend(t, log_probs_NV, scores, out, done, count, cache):
        """Picks the `width` best one-token extensions of every prompt's beams."""
        vocab = log_probs_NV.shape[-1]
        lp = log_probs_NV.reshape(batch, width, vocab)
        only_pad = jnp.where(jnp.arange(vocab) == pad_id, 0.0, -jnp.inf)
        lp = jnp.where(done[..., None], only_pad, lp)
        best, flat = jax.lax.top_k((scores[..., None] + lp).reshape(batch, width * vocab), width)
        parent, token = flat // vocab, (flat % vocab).astype(jnp.int32)
        take = lambda x: jnp.take_along_axis(x, parent.reshape(batch, width, *([1] * (x.ndim - 2))), axis=1)
        out, done, count = take(out), take(done), take(count)
        out = jax.lax.dynamic_update_slice_in_dim(out, token[..., None], t, axis=2)
        count = count + (~done).astype(jnp.int32)
        rows = (jnp.arange(batch)[:, None] * width + parent).reshape(-1)
        cache = constrain_cache(jax.tree.map(lambda c: jnp.take(c, rows, axis=0), cache), cfg)
        return best, out, done | (token == eos_id), count, cache, token.reshape(-1)

    scores, out, done, count, cache, last = extend(0, log_probs, scores, out, done, count, cache)

    def cond(carry):
        t, _, _, done, _, _, _ = carry
        return (t < max_new_tokens) & ~jnp.all(done)

    def body(carry):
        t, last, scores, done, out, count, cache = carry
        logits, cache = decode_one(nnx.merge(graphdef, params), cfg, last, cache, prompt_len + t - 1, start)
        lp = jax.nn.log_softmax(logits.astype(jnp.float32))
        scores, out, done, count, cache, last = extend(t, lp, scores, out, done, count, cache)
        return t + 1, last, scores, done, out, count, cache

    carry = (jnp.int32(1), last, scores, done, out, count, cache)
    _, _, scores, _, out, count, _ = jax.lax.while_loop(cond, body, carry)
    normalized = scores / jnp.maximum(count, 1).astype(jnp.float32) ** length_penalty
    best = jnp.argmax(normalized, axis=1)
    pick = lambda x: jnp.take_along_axis(x, best.reshape(batch, 1, *([1] * (x.ndim - 2))), axis=1)[:, 0]
    return {"tokens": pick(out), "num_generated": pick(count), "log_prob": pick(scores)}


def compile_beam_search(graphdef: Any, param_shardings: Any, cfg: ModelConfig, mesh: Mesh, *,
                        beam_width: int, max_new_bucket: int, eos_id: int,
                        pad_id: int, dtype: str = "float32") -> Callable[..., dict]:
    """`beam_search` under jax.jit; call as fn(params, tokens, lengths, max_new_tokens=None, length_penalty=1.0).

    The params are converted to the decoding layout on the first call with them (`DecodeLayout`),
    the kernels held in `dtype` (float32, bfloat16 or int8).
    """
    layout = decode_layout(graphdef, param_shardings, cfg, mesh, dtype)
    rows, scalar = batch_sharding(mesh), replicated(mesh)
    jitted = jax.jit(
        functools.partial(beam_search, graphdef=layout.graphdef, cfg=layout.cfg, beam_width=beam_width,
                          max_new_bucket=max_new_bucket, eos_id=eos_id, pad_id=pad_id),
        in_shardings=(layout.shardings, rows, rows, scalar, scalar),
        out_shardings={"tokens": rows, "num_generated": rows, "log_prob": rows})

    def run(params, tokens, lengths, max_new_tokens=None, length_penalty=1.0):
        with sharding_context(mesh):
            return jitted(layout.convert(params), tokens, lengths,
                          np.int32(max_new_bucket if max_new_tokens is None else max_new_tokens),
                          np.float32(length_penalty))

    return run
