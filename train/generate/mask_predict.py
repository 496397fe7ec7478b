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


def top_k_fillers(params: Any, batch: Batch, targets: jax.Array, *, graphdef: Any,
                  k: int) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(probabilities, token ids) [B, L, k] of the k most likely tokens at every position, and the
    rank [B, L] (1 = most likely) of each position's `targets` id (0 where the target is -1)."""
    logits = nnx.merge(graphdef, params)(batch["tokens"], batch["segment_ids"], batch["positions"])
    probs = jax.nn.softmax(logits, axis=-1)
    top, ids = jax.lax.top_k(probs, k)
    target_prob = jnp.take_along_axis(probs, jnp.maximum(targets, 0)[..., None], axis=-1)
    ranks = jnp.where(targets >= 0, 1 + jnp.sum(probs > target_prob, axis=-1), 0)
    return top, ids.astype(jnp.int32), ranks.astype(jnp.int32)


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
    """`top_k_fillers` under jax.jit (batch rows over data/fsdp); targets default to none."""
    jitted = jax.jit(functools.partial(top_k_fillers, graphdef=graphdef, k=k),
                     in_shardings=(param_shardings, batch_shardings(mesh, _KEYS), batch_sharding(mesh)))
    run = _in_mesh(jitted, mesh)

    def fillers(params, batch, targets=None):
        if targets is None:
            targets = to_global({"targets": np.full(batch["tokens"].shape, -1, np.int32)}, mesh)["targets"]
        return run(params, batch, targets)

    return fillers


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
# Function words a masked-word example should not hide: guessing them shows little learning.
STOPWORDS = frozenset("""
a about above after again against all also am an and any are as at be because been before being below
between both but by can could did do does doing down during each either else even ever every few for from
further had has have having he her here hers him his how however if in into is it its itself just may
might more most much must my neither no nor not now of off often on once one only or other otherwise our
out over own per rather same shall she should since so some such than that the their them then there
these they this those though through thus to too under until up upon us very via was we were what when
where whether which while who whom whose why will with within without would yet you your
""".split())


def held_out_examples(documents: list[str], tokenizer, count: int, seed: int = 0) -> list[tuple[str, str]]:
    """(masked sentence, hidden word) pairs drawn from held-out text by `seed`, one per document.

    Documents and sentences are drawn at random (8-24 words, starting with a capital); the
    hidden word is drawn among the sentence's content words (letters only, not a stopword)
    that the tokenizer keeps as one piece, so [MASK] stands for exactly that word.
    """
    rng = np.random.default_rng(seed)
    examples = []
    for index in rng.permutation(len(documents)):
        sentences = [s for s in _SENTENCE_END.split(documents[index])
                     if 8 <= len(s.split()) <= 24 and s[:1].isupper()]
        if not sentences:
            continue
        words = sentences[rng.integers(len(sentences))].split()
        content = [i for i, w in enumerate(words) if i > 0 and _WORD.match(w) and w.lower() not in STOPWORDS
                   and len(tokenizer.encode(w)) == 1]
        if not content:
            continue
        target = content[rng.integers(len(content))]
        examples.append((" ".join(words[:target] + ["[MASK]"] + words[target + 1:]), words[target]))
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
    return [[fillers for fillers, _ in masks] for masks in fill_and_rank(trained, texts, top_k)]


def fill_and_rank(trained, texts: list[str], top_k: int, hidden: list[str | None] | None = None):
    """For each text, for each [MASK]: (top_k (piece, probability) fillers, rank of the hidden word or None).

    `hidden[i]` is the word text i's masks stand for (a single piece), or None.
    """
    check_encoder(trained.config)
    if trained.tokenizer.mask_id is None:
        raise ConfigError(f"tokenizer {trained.tokenizer.path} has no mask token; fill-mask needs one")
    tok, seq_len = trained.tokenizer, trained.config.data.seq_len
    hidden = hidden or [None] * len(texts)
    rows, targets = [], []
    for text, word in zip(texts, hidden):
        ids = [tok.cls_id] + tok.encode(text) + [tok.sep_id]
        if tok.mask_id not in ids:
            raise ConfigError(f"--text={text!r} has no [MASK]; write [MASK] where a word should be filled")
        if len(ids) > seq_len:
            raise ConfigError(f"--text={text!r} is {len(ids)} tokens; accepted: at most {seq_len}")
        target = tok.encode(word)[0] if word else -1
        rows.append(ids + [tok.pad_id] * (seq_len - len(ids)))
        targets.append([target if i == tok.mask_id else -1 for i in rows[-1]])
    tokens = np.asarray(rows, np.int32)
    batch = {"tokens": tokens, "segment_ids": (tokens != tok.pad_id).astype(np.int32),
             "positions": np.broadcast_to(np.arange(seq_len, dtype=np.int32), tokens.shape).copy()}
    # Softmax, top-k and ranks run inside the jitted call: only [B, L, top_k] comes back to the host.
    top_k_fn = compile_top_k_fillers(trained.layout.graphdef, trained.layout.shardings["params"], trained.mesh, top_k)
    batch = to_global({**batch, "targets": np.asarray(targets, np.int32)}, trained.mesh)
    targets = batch.pop("targets")
    probs, ids, ranks = (np.asarray(x) for x in top_k_fn(trained.params, batch, targets))
    results = []
    for row, row_probs, row_ids, row_ranks in zip(tokens, probs, ids, ranks):
        per_mask = []
        for position in np.flatnonzero(row == tok.mask_id):
            fillers = [(tok.id_to_piece(int(i)).replace("▁", ""), float(p))
                       for p, i in zip(row_probs[position], row_ids[position])]
            per_mask.append((fillers, int(row_ranks[position]) or None))
        results.append(per_mask)
    return results
