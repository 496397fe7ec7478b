"""Fill-mask from a trained MLM workdir: top-k fillers for each [MASK] in held-out or given text.

The library is train/generate/mask_predict.py.

    python -m train.generate.fill_mask_cli --workdir=DIR [--text="The [MASK] is ..."] [--examples=5] [--candidates=5]
"""

from __future__ import annotations

from absl import flags

from train import program
from train.generate.mask_predict import check_encoder, fill_and_rank, held_out_examples

_WORKDIR = program.WORKDIR
_STEP = program.STEP
_TEXT = program.TEXT
_EXAMPLES = flags.DEFINE_integer("examples", 5, "Held-out sentences to mask when no --text is given.")
_CANDIDATES = flags.DEFINE_integer("candidates", 5, "Fillers to print per mask (the top k).")
_SEED = program.SEED

def main(argv: list[str]) -> None:
    del argv
    from train.workdir import open_workdir

    trained = open_workdir(_WORKDIR.value or "", _STEP.value, check=check_encoder)  # refused before any read
    if _TEXT.value:
        examples = [(text, None) for text in _TEXT.value]
    else:
        docs = trained.data.validation_documents()
        examples = held_out_examples(docs, trained.tokenizer, _EXAMPLES.value, seed=_SEED.value)
    print(f"fill-mask with checkpoint step {trained.step} of {_WORKDIR.value}:")
    filled = fill_and_rank(trained, [t for t, _ in examples], _CANDIDATES.value, [a for _, a in examples])
    in_top = 0
    for (text, answer), masks in zip(examples, filled):
        print(f"\n  {text}")
        for fillers, rank in masks:
            print("    " + "  ".join(f"{piece!r} {p:.3f}" for piece, p in fillers))
            if answer:
                in_top += rank <= _CANDIDATES.value
                print(f"    hidden word: {answer!r}, ranked {rank} of {trained.config.model.vocab_size:,}")
    if not _TEXT.value:
        print(f"\n{in_top} of {len(examples)} hidden words in the top {_CANDIDATES.value} "
              f"(held-out sentences drawn with --seed={_SEED.value})")


if __name__ == "__main__":
    program.run(main)
