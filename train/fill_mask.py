"""Fill-mask from a trained MLM workdir: top-k fillers for each [MASK] in held-out or given text.

    python -m train.fill_mask --workdir=DIR [--text="The [MASK] is ..."] [--examples=5] [--candidates=5]
"""

from __future__ import annotations

import re

import numpy as np
from absl import flags

from train import cli

_WORKDIR = cli.WORKDIR
_STEP = cli.STEP
_TEXT = cli.TEXT
_EXAMPLES = flags.DEFINE_integer("examples", 5, "Held-out sentences to mask when no --text is given.")
_CANDIDATES = flags.DEFINE_integer("candidates", 5, "Fillers to print per mask (the top k).")

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


def fill(trained, texts: list[str], top_k: int) -> list[list[list[tuple[str, float]]]]:
    """For each text, for each [MASK] in it: the top_k (piece, probability) fillers."""
    from train.mask_predict import compile_top_k_fillers
    from train.mesh import to_global

    tok, seq_len = trained.data.tokenizer, trained.config.data.seq_len
    rows = []
    for text in texts:
        ids = [tok.cls_id] + tok.encode(text) + [tok.sep_id]
        if tok.mask_id not in ids:
            raise cli.ConfigError(f"--text={text!r} has no [MASK]; write [MASK] where a word should be filled")
        if len(ids) > seq_len:
            raise cli.ConfigError(f"--text={text!r} is {len(ids)} tokens; accepted: at most {seq_len}")
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


def main(argv: list[str]) -> None:
    del argv
    from train.workdir import open_workdir

    trained = open_workdir(_WORKDIR.value or "", _STEP.value)
    if _TEXT.value:
        examples = [(text, None) for text in _TEXT.value]
    else:
        docs = trained.data.validation_documents()
        examples = held_out_examples(docs, trained.data.tokenizer, _EXAMPLES.value)
    print(f"fill-mask with checkpoint step {trained.step} of {_WORKDIR.value}:")
    for (text, answer), masks in zip(examples, fill(trained, [t for t, _ in examples], _CANDIDATES.value)):
        print(f"\n  {text}" + (f"\n  (hidden word: {answer})" if answer else ""))
        for fillers in masks:
            print("    " + "  ".join(f"{piece!r} {p:.3f}" for piece, p in fillers))


if __name__ == "__main__":
    cli.run(main)
