"""Supervised fine-tuning visibly works: a task the pretrained tiny decoder cannot do before, and can
after full fine-tuning or LoRA (a shorter run than benchmarks/sft_reverse.py, whose figures the
README reports)."""

import re

import pytest

from data.chat_template import DEFAULT_TEMPLATE, ChatTemplate, special_tokens
from train.finetune.supervised import fine_tune
from train.workdir import open_workdir

from tests.sft_fixtures import (exact_match, held_out_records, reverse_records, sft_config, shared_pretrained,
                                write_jsonl)

pytestmark = pytest.mark.slow


def test_fine_tuning_teaches_word_reversal_full_and_lora(tmp_path_factory, capsys):
    pretrained, config = shared_pretrained(tmp_path_factory)
    root = tmp_path_factory.mktemp("sft-works")
    records = reverse_records(4000, seed=1)
    data = write_jsonl(root / "train.jsonl", records)
    held_out = held_out_records(50, records)

    def score(workdir):
        trained = open_workdir(workdir)
        return exact_match(trained, held_out, ChatTemplate(DEFAULT_TEMPLATE, special_tokens(trained.data.tokenizer)))

    before, before_answers = score(pretrained)
    fine_tune(sft_config(config, data, steps=300, learning_rate=3e-3), root / "full", str(pretrained))
    full, full_answers = score(root / "full")
    fine_tune(sft_config(config, data, steps=500, lora_rank=8, learning_rate=1e-2, targets=("q", "k", "v", "o")),
              root / "lora", str(pretrained))
    log = capsys.readouterr().out
    lora, lora_answers = score(root / "lora")
    with capsys.disabled():
        print(f"\nexact match on {len(held_out)} held-out prompts: before {before:.2f}, full {full:.2f}, LoRA {lora:.2f}")
        for record, *answers in list(zip(held_out, before_answers, full_answers, lora_answers))[:3]:
            print(f"  {record['prompt']!r} -> before/full/LoRA {answers} (want {record['response']!r})")
    share = float(re.search(r"trainable: LoRA adapters, ([0-9.]+)%", log).group(1))
    assert share <= 5.0  # rank 8 on q,k,v,o
    assert before <= 0.05
    assert full >= 0.3 and lora >= 0.25
