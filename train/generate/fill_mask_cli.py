"""Fill-mask from a trained MLM workdir: top-k fillers for each [MASK] in held-out or given text.

The library is train/generate/mask_predict.py.

    python -m train.generate.fill_mask_cli --workdir=DIR [--text="The [MASK] is ..."] [--examples=5] [--candidates=5]
"""

from __future__ import annotations

from absl import flags

from train import program
from train.generate.mask_predict import check_encoder, fill, held_out_examples

_WORKDIR = program.WORKDIR
_STEP = program.STEP
_TEXT = program.TEXT
_EXAMPLES = flags.DEFINE_integer("examples", 5, "Held-out sentences to mask when no --text is given.")
_CANDIDATES = flags.DEFINE_integer("candidates", 5, "Fillers to print per mask (the top k).")

def main(argv: list[str]) -> None:
    del argv
    from train.workdir import open_workdir

    trained = open_workdir(_WORKDIR.value or "", _STEP.value, check=check_encoder)  # refused before any read
    if _TEXT.value:
        examples = [(text, None) for text in _TEXT.value]
    else:
        docs = trained.data.validation_documents()
        examples = held_out_examples(docs, trained.tokenizer, _EXAMPLES.value)
    print(f"fill-mask with checkpoint step {trained.step} of {_WORKDIR.value}:")
    for (text, answer), masks in zip(examples, fill(trained, [t for t, _ in examples], _CANDIDATES.value)):
        print(f"\n  {text}" + (f"\n  (hidden word: {answer})" if answer else ""))
        for fillers in masks:
            print("    " + "  ".join(f"{piece!r} {p:.3f}" for piece, p in fillers))


if __name__ == "__main__":
    program.run(main)
