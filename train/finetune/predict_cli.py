"""Predict labels with a fine-tuned workdir: the label and every label's probability per text.

    python -m train.finetune.predict_cli --workdir=OUT --text="Return the event loop." [--text=...] [--text_pair=...]
"""

from __future__ import annotations

import numpy as np
from absl import flags

from train import program
from train.config import ConfigError

_WORKDIR = program.WORKDIR
_STEP = program.STEP
_TEXT = program.TEXT
_TEXT_PAIR = flags.DEFINE_multi_string("text_pair", [], "Second texts for a sentence-pair task, one per --text.")


def main(argv: list[str]) -> None:
    if not _WORKDIR.value:
        raise ConfigError("--workdir is required: the workdir of a train.finetune run")
    if not _TEXT.value:
        raise ConfigError("give at least one --text to classify")
    from train.finetune.classify import predict  # JAX starts here

    labels, probs = predict(_WORKDIR.value, _TEXT.value, _TEXT_PAIR.value or None, _STEP.value)
    for index, text in enumerate(_TEXT.value):
        best = int(np.argmax(probs[index]))
        shown = "  ".join(f"{label} {p:.3f}" for label, p in zip(labels, probs[index]))
        print(f"{labels[best]}\t{text!r}\n  probabilities: {shown}")


if __name__ == "__main__":
    program.run(main)
