"""Supervised fine-tuning visibly works: exact-match accuracy on a word-reversal instruction task,
before fine-tuning, after full fine-tuning and after LoRA, on one tiny pretrained decoder.

The decoder (tests/sft_fixtures.py) is pretrained on sentences of random words; it never sees
an instruction, the chat template or "reverse: a b c" answered by "c b a". Fine-tuning data
is 4000 such records; the held-out prompts are new word orders. Answers are greedy and go
through the workdir's chat template as `./launch.sh decode --chat` sends them.

    PYTHONPATH=. .venv/bin/python benchmarks/sft_reverse.py [--out=/tmp/sft_reverse] [--sft_steps=800]
"""

from __future__ import annotations

import pathlib
import time

from absl import app, flags, logging

_OUT = flags.DEFINE_string("out", "/tmp/meshlm-sft-reverse", "Folder for the workdirs (reused when present).")
_HIDDEN = flags.DEFINE_integer("hidden", 128, "The decoder's width.")
_MLP = flags.DEFINE_integer("mlp_dim", 256, "The decoder's MLP width.")
_PRETRAIN = flags.DEFINE_integer("pretrain_steps", 600, "Pretraining steps.")
_STEPS = flags.DEFINE_integer("sft_steps", 800, "Fine-tuning steps (full and LoRA alike).")
_RANK = flags.DEFINE_integer("rank", 8, "LoRA rank (alpha = 2 x rank).")
_TARGETS = flags.DEFINE_list("targets", ["q", "k", "v", "o"], "LoRA targets.")
_FULL_RATE = flags.DEFINE_float("full_learning_rate", 3e-3, "Peak learning rate of full fine-tuning.")
_LORA_RATE = flags.DEFINE_float("lora_learning_rate", 5e-3, "Peak learning rate of LoRA.")
_RECORDS = flags.DEFINE_integer("records", 4000, "Fine-tuning records.")
_HELD_OUT = flags.DEFINE_integer("held_out", 200, "Held-out prompts scored by exact match.")


def main(argv: list[str]) -> None:
    del argv
    logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
    from data.chat_template import DEFAULT_TEMPLATE, write_template
    from tests.sft_fixtures import (decoder_config, exact_match, held_out_records, pretraining_text, reverse_records,
                                    sft_config, write_jsonl)
    from train.finetune.supervised import fine_tune
    from train.generate.completions import workdir_chat_template
    from train.loop import train
    from train.workdir import open_workdir

    out = pathlib.Path(_OUT.value)
    corpus = pretraining_text(out / "corpus" / "words.txt")
    pretrain = decoder_config(out / "cache", corpus, steps=_PRETRAIN.value, hidden=_HIDDEN.value, mlp_dim=_MLP.value)
    pretrain.train.log_every = 100
    train(pretrain, out / "pretrained")
    records = reverse_records(_RECORDS.value, seed=1)
    data = write_jsonl(out / "sft" / "train.jsonl", records)
    held_out = held_out_records(_HELD_OUT.value, records)

    def score(workdir: pathlib.Path) -> tuple[float, list[str]]:
        trained = open_workdir(workdir)
        return exact_match(trained, held_out, workdir_chat_template(str(workdir), trained.data.tokenizer))

    write_template(out / "pretrained", DEFAULT_TEMPLATE)  # "before": the same prompts, the same template
    before, before_answers = score(out / "pretrained")
    results = {}
    for name, rank, rate in (("full", 0, _FULL_RATE.value), ("lora", _RANK.value, _LORA_RATE.value)):
        config = sft_config(pretrain, data, steps=_STEPS.value, lora_rank=rank, learning_rate=rate,
                            targets=tuple(_TARGETS.value))
        config.train.log_every = 200
        started = time.perf_counter()
        fine_tune(config, out / name, str(out / "pretrained"))
        accuracy, answers = score(out / name)
        results[name] = (accuracy, answers, time.perf_counter() - started)
    print(f"\nexact match on {len(held_out)} held-out prompts: before fine-tuning {before:.3f}; "
          f"full fine-tuning {results['full'][0]:.3f}; LoRA rank {_RANK.value} on {','.join(_TARGETS.value)} "
          f"{results['lora'][0]:.3f} ({results['lora'][0] / max(results['full'][0], 1e-9):.2f} x full)")
    for record, was, full, lora in list(zip(held_out, before_answers, results["full"][1], results["lora"][1]))[:5]:
        print(f"  {record['prompt']!r}: before {was!r}, full {full!r}, LoRA {lora!r} (want {record['response']!r})")


if __name__ == "__main__":
    app.run(main)
