"""Stop strings for the compiled decoding loop: their token ids as a table, and the cut of a text at them.

The loop (autoregressive.py) compares token ids, not text, so a stop string becomes the
token sequences that surely read as it: its own encoding, and the same without leading
whitespace-only pieces (sentencepiece encodes "." alone as "▁" "." but after a word as
"."). A sequence is kept only if, decoded after an ordinary token, its text contains the
string. The loop then ends a row early; the text is still cut at the string on the host,
so other spellings of it (other token splits) are caught there, only without the early end.
"""

from __future__ import annotations

import numpy as np

from train.generate.autoregressive import bucket, no_stops


def stop_sequences(tokenizer, text: str) -> list[list[int]]:
    """Token sequences whose decoded text contains `text` wherever they occur after a first token."""
    ids = tokenizer.encode(text)
    candidates = [ids]
    blank = 0
    while blank < len(ids) - 1 and not tokenizer.decode(ids[:blank + 1]).strip():
        blank += 1
    if blank:
        candidates.append(ids[blank:])
    return [c for c in candidates if c and _reads_as(tokenizer, c, text)]


def _reads_as(tokenizer, ids: list[int], text: str) -> bool:
    """True when `ids` decoded after an ordinary token add text that contains `text`."""
    anchor = tokenizer.encode("a")
    before = tokenizer.decode(anchor)
    after = tokenizer.decode(anchor + ids)
    return after.startswith(before) and text in after[len(before):]


def stop_table(tokenizer, stops: list[str], minimum: int = 4) -> np.ndarray:
    """int32 [S, T] for the decoding loop: one sequence a row, right-aligned, -1 on the left.

    S and T are rounded up to powers of two (at least `minimum`) so that tasks with a few
    short stop strings share one compile; no usable sequence gives the never-matching table.
    """
    sequences = [seq for text in stops for seq in stop_sequences(tokenizer, text)]
    if not sequences:
        return no_stops()
    rows = bucket(len(sequences), minimum)
    width = bucket(max(len(s) for s in sequences), minimum)
    table = np.full((rows, width), -1, np.int32)
    for row, seq in enumerate(sequences):
        table[row, width - len(seq):] = seq
    return table


def cut_at_stop(text: str, stops: list[str]) -> str:
    """`text` up to the earliest occurrence of any (non-empty) stop string."""
    end = len(text)
    for stop in stops:
        if stop:
            found = text.find(stop)
            if 0 <= found < end:
                end = found
    return text[:end]
