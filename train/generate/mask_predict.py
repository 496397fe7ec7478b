"""Encoder generation: top-k fillers for each [MASK] (fill-mask), and mask-predict, jitted.

Mask-predict (Ghazvininejad et al., 2019) fills a span of [MASK] tokens in T passes: pass
1 predicts every masked slot; pass t re-masks the n = N (T - t) / T least confident
predictions of the span and predicts them again, keeping the rest.
"""

from __future__ import annotations

import functools
import re
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from train.config import ConfigError
from train.mesh import batch_sharding, batch_shardings, replicated, sharding_context, to_global

Batch = dict[str, jax.Array]
_KEYS = ("tokens", "segment_ids", "positions")


def top_k_fillers(params: Any, batch: Batch, *, graphdef: Any, k: int) -> tuple[jax.Array, jax.Array]:
    """(probabilities, token ids), each [B, L, k]: the k most likely tokens at every position."""
    logits = nnx.merge(graphdef, params)(batch["tokens"], batch["segment_ids"], batch["positions"])
    probs, ids = jax.lax.top_k(jax.nn.softmax(logits, axis=-1), k)
    return probs, ids.astype(jnp.int32)


def _predict(params: Any, graphdef: Any, batch: Batch, tokens: jax.Array, banned: jax.Array):
    """Best non-special token and its probability at every position."""
    logits = nnx.merge(graphdef, params)(tokens, batch["segment_ids"], batch["positions"])
    probs = jax.nn.softmax(jnp.where(banned, -jnp.inf, logits), axis=-1)
    return jnp.argmax(probs, axis=-1).astype(jnp.int32), jnp.max(probs, axis=-1)


def mask_predict(params: Any, batch: Batch, span: jax.Array, iterations: jax.Array, *, graphdef: Any,
                 mask_id: int, vocab_size: int, special_ids: Sequence[int]) -> jax.Array:
    """Tokens [B, L] with every `span` (bool [B, L]) slot filled after `iterations` passes."""
    banned = jnp.zeros((vocab_size,), bool).at[jnp.asarray(special_ids, jnp.int32)].set(True)
    tokens = jnp.where(span, mask_id, batch["tokens"])
    pred, conf = _predict(params, graphdef, batch, tokens, banned)
    tokens = jnp.where(span, pred, tokens)
    conf = jnp.where(span, conf, jnp.inf)
    span_size = jnp.sum(span, axis=1)

    def one_pass(t, carry):
        tokens, conf = carry
        remask_count = (span_size * (iterations - t)) // iterations
        rank = jnp.argsort(jnp.argsort(conf, axis=1), axis=1)  # 0 = least confident
        remask = span & (rank < remask_count[:, None])
        pred, new_conf = _predict(params, graphdef, batch, jnp.where(remask, mask_id, tokens), banned)
        return jnp.where(remask, pred, tokens), jnp.where(remask, new_conf, conf)

    tokens, _ = jax.lax.fori_loop(1, iterations, one_pass, (tokens, conf))
    return tokens


def compile_top_k_fillers(graphdef: Any, param_shardings: Any, mesh: Mesh, k: int) -> Callable:
    """`top_k_fillers` under jax.jit (batch rows over data/fsdp)."""
    jitted = jax.jit(functools.partial(top_k_fillers, graphdef=graphdef, k=k),
                     in_shardings=(param_shardings, batch_shardings(mesh, _KEYS)))
    return _in_mesh(jitted, mesh)


def compile_mask_predict(graphdef: Any, param_shardings: Any, mesh: Mesh, *, mask_id: int, vocab_size: int,
                         special_ids: Sequence[int]) -> Callable:
    """`mask_predict` under jax.jit; call as fn(params, batch, span, iterations)."""
    jitted = jax.jit(
        functools.partial(mask_predict, graphdef=graphdef, mask_id=mask_id, vocab_size=vocab_size,
                          special_ids=tuple(int(i) for i in special_ids)),
        in_shardings=(param_shardings, batch_shardings(mesh, _KEYS), batch_sharding(mesh), replicated(mesh)),
        out_shardings=batch_sharding(mesh))
    wrapped = _in_mesh(jitted, mesh)
    return lambda params, batch, span, iterations: wrapped(params, batch, span, np.int32(iterations))


def _in_mesh(fn: Callable, mesh: Mesh) -> Callable:
    def run(*args):
        with sharding_context(mesh):
            return fn(*args)

    return run


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
_WORD = re.compile(r"^[A-Za-z]{3,}$")


def held_out_examples(documents: list[str], tokenizer, count: int) -> list[tuple[str, str]]:
    """(masked sentence, hidden word) pairs from validation text: one single-piece word masked each."""
    examples = []
    for doc in documents:
        for sentence in _SENTENCE_END.split(doc):
            words = sentence.split()
            if not 8 <= len(words) <= 24 or not sentence[:1].isupper():
                continue
            middle = range(len(words) // 3, len(words) - 1)
            target = next((i for i in middle if _WORD.match(words[i])
                           and len(tokenizer.encode(words[i])) == 1), None)
            if target is None:
                continue
            examples.append((" ".join(words[:target] + ["[MASK]"] + words[target + 1:]), words[target]))
            break  # one sentence per document keeps the examples varied
        if len(examples) == count:
            break
    return examples


def check_encoder(config) -> None:
    """Fill-mask needs an encoder that reads both sides of a [MASK]; anything else is refused in one line."""
    arch = config.model.arch
    if arch != "bert":
        raise ConfigError(f"the workdir holds a {arch} model; fill-mask needs an encoder (model.arch=bert) "
                          "(for a decoder use python -m train.generate.decode_cli)")


def fill(trained, texts: list[str], top_k: int) -> list[list[list[tuple[str, float]]]]:
    """For each text, for each [MASK] in it: the top_k (piece, probability) fillers."""
    check_encoder(trained.config)
    if trained.tokenizer.mask_id is None:
        raise ConfigError(f"tokenizer {trained.tokenizer.path} has no mask token; fill-mask needs one")
    tok, seq_len = trained.tokenizer, trained.config.data.seq_len
    rows = []
    for text in texts:
        ids = [tok.cls_id] + tok.encode(text) + [tok.sep_id]
        if tok.mask_id not in ids:
            raise ConfigError(f"--text={text!r} has no [MASK]; write [MASK] where a word should be filled")
        if len(ids) > seq_len:
            raise ConfigError(f"--text={text!r} is {len(ids)} tokens; accepted: at most {seq_len}")
        rows.append(ids + [tok.pad_id] * (seq_len - len(ids)))
    tokens = np.asarray(rows, np.int32)
    batch = {"tokens": tokens, "segment_ids": (tokens != tok.pad_id).astype(np.int32),
             "positions": np.broadcast_to(np.arange(seq_len, dtype=np.int32), tokens.shape).copy()}
    # Softmax and top-k run inside the jitted call: only [B, L, top_k] comes back to the host.
    top_k_fn = compile_top_k_fillers(trained.layout.graphdef, trained.layout.shardings["params"], trained.mesh, top_k)
    probs, ids = (np.asarray(x) for x in top_k_fn(trained.params, to_global(batch, trained.mesh)))
    results = []
    for row, row_probs, row_ids in zip(tokens, probs, ids):
        per_mask = []
        for position in np.flatnonzero(row == tok.mask_id):
            per_mask.append([(tok.id_to_piece(int(i)).replace("▁", ""), float(p))
                             for p, i in zip(row_probs[position], row_ids[position])])
        results.append(per_mask)
    return results
