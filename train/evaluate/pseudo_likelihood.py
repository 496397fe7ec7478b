"""Pseudo-log-likelihood for BERT-style encoders: each token masked in turn, the rest left visible.

An encoder gives no left-to-right probability of a continuation. Its stand-in (Salazar et
al., 2020, "Masked Language Model Scoring") is the sum, over the continuation's tokens,
of log p(token | every other token) with that one token replaced by [MASK]. Each masked
token is one row of `scoring.Row`, so a request of n continuation tokens costs n rows,
and all requests' rows run together in the scorer's batches (one batched pass). Rows are
laid out as in training: [CLS] context continuation [SEP], positions from 0.
"""

from __future__ import annotations

from typing import Sequence

from train.evaluate.scoring import Row


def masked_rows(context: Sequence[int], continuation: Sequence[int], *, max_len: int, cls_id: int,
                sep_id: int, mask_id: int) -> list[Row]:
    """One row per continuation token, that token masked; the context is cut from the left to fit.

    `context` may start with [CLS] (as the harness's encoded contexts do); it is kept first.
    """
    if not continuation:
        raise ValueError("an empty continuation has no tokens to score; give the continuation some text")
    body = list(context[1:]) if context and context[0] == cls_id else list(context)
    room = max_len - 2 - len(continuation)
    if room < 0:
        raise ValueError(f"a continuation of {len(continuation)} tokens does not fit the encoder's "
                         f"max_len={max_len} with [CLS] and [SEP]")
    body = body[len(body) - room:] if len(body) > room else body
    whole = [cls_id] + body + list(continuation) + [sep_id]
    first = 1 + len(body)
    return [_masked(whole, p, mask_id) for p in range(first, first + len(continuation))]


def text_rows(token_ids: Sequence[int], *, max_len: int, cls_id: int, sep_id: int, mask_id: int) -> list[Row]:
    """Rows for the pseudo-log-likelihood of a whole text: disjoint windows of max_len - 2 tokens."""
    width = max_len - 2
    rows = []
    for start in range(0, len(token_ids), width):
        window = list(token_ids[start:start + width])
        rows += masked_rows([cls_id], window, max_len=max_len, cls_id=cls_id, sep_id=sep_id, mask_id=mask_id)
    return rows


def _masked(whole: list[int], position: int, mask_id: int) -> Row:
    tokens = list(whole)
    tokens[position] = mask_id
    return Row(tuple(tokens), tuple(whole), position, position + 1)
