"""Greedy agreement between decoding dtypes (float32, bfloat16, int8) on a trained decoder's prompts.

Decodes the same prompts greedily with the workdir's weights held in each dtype
(`./launch.sh decode --dtype=...`) and prints, per pair: the share of generated tokens
equal position by position, the share of prompts whose whole continuation is identical,
and the mean length of the common prefix. Prompts are the first words of held-out
documents: the built-in corpus's validation split (what configs/gpt_tiny.py trains on), or
one prompt per line of --prompts_file.

    .venv/bin/python -m benchmarks.decode_agreement --workdir=workdirs/gpt [--prompts=32] [--words=6]
        [--max_new_tokens=32] [--prompts_file=FILE]
"""

from __future__ import annotations

import itertools
import pathlib

import numpy as np
from absl import app, flags

from data.builtin_corpus import builtin_corpus, default_cache_dir, read_documents
from train.generate.completions import Sampling, complete
from train.workdir import open_workdir

_WORKDIR = flags.DEFINE_string("workdir", None, "A trained decoder's workdir.")
_PROMPTS = flags.DEFINE_integer("prompts", 32, "How many held-out documents to prompt with.")
_WORDS = flags.DEFINE_integer("words", 6, "Words of each document in its prompt.")
_MAX_NEW = flags.DEFINE_integer("max_new_tokens", 32, "Tokens to generate per prompt at most.")
_PROMPTS_FILE = flags.DEFINE_string("prompts_file", None, "One prompt per line instead of the corpus's.")
DTYPES = ("float32", "bfloat16", "int8")


def held_out_prompts() -> list[str]:
    """The first --words words of the first --prompts validation documents (or --prompts_file's lines)."""
    if _PROMPTS_FILE.value:
        return [line for line in pathlib.Path(_PROMPTS_FILE.value).read_text().splitlines() if line.strip()]
    docs = read_documents(builtin_corpus(default_cache_dir()).validation)
    prompts = (" ".join(doc.split()[:_WORDS.value]) for doc in docs if len(doc.split()) > _WORDS.value)
    return list(itertools.islice(prompts, _PROMPTS.value))


def main(argv: list[str]) -> None:
    del argv
    trained = open_workdir(_WORKDIR.value)
    prompts = held_out_prompts()
    sampling = Sampling(max_new_tokens=_MAX_NEW.value)
    out = {dtype: complete(trained, prompts, sampling, dtype=dtype) for dtype in DTYPES}
    print(f"{len(prompts)} held-out prompts, greedy, up to {_MAX_NEW.value} new tokens; workdir "
          f"{_WORKDIR.value} step {trained.step}")
    for a, b in (("bfloat16", "float32"), ("int8", "bfloat16"), ("int8", "float32")):
        equal, total, same, prefix = 0, 0, 0, []
        for x, y in zip(out[a].token_ids, out[b].token_ids):
            n = max(len(x), len(y))
            x, y = np.pad(x, (0, n - len(x)), constant_values=-1), np.pad(y, (0, n - len(y)), constant_values=-1)
            equal, total, same = equal + int((x == y).sum()), total + n, same + int((x == y).all())
            prefix.append(int(np.argmin(x == y)) if not (x == y).all() else n)
        print(f"{a} vs {b}: {equal / total:.1%} of tokens equal, {same}/{len(prompts)} continuations identical, "
              f"common prefix {np.mean(prefix):.1f} tokens on average")
    print(f"example: {prompts[0]!r} -> " + " | ".join(f"{d}: {out[d].texts[0]!r}" for d in DTYPES))


if __name__ == "__main__":
    flags.mark_flag_as_required("workdir")
    app.run(main)
