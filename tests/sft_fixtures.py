"""A tiny pretrained decoder and a word-reversal instruction task, made at test time and shared.

The pretraining text is sentences of random words from WORDS (the template's words
"User", "Assistant" and "reverse" among them, so the tokenizer knows them), some of them
copying or reversing a phrase after a marker word; it never shows an instruction, the chat
template, or a prompt "reverse: w1 w2 w3" answered with "w3 w2 w1". Before fine-tuning
the decoder does not answer that; after, it does.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib

import numpy as np

from train.config import Config, DataConfig, LoraConfig, MeshConfig, ModelConfig, OptimConfig, TrainConfig

WORDS = ("red blue green black white stone river cloud paper light water tree bird fish house road "
         "sun moon star fire wind rain snow leaf").split()
TEMPLATE_WORDS = ("User", "Assistant", "reverse")


def pretraining_text(path: pathlib.Path, docs: int = 3000, seed: int = 0) -> pathlib.Path:
    """Blank-line-separated documents of random words, the template's words sprinkled in.

    A third of them say a phrase twice ("a b c and a b c") and a third say it, then "back",
    then reversed ("a b c back c b a"): text copies and reverses itself, but never after an
    instruction, in the chat template, or with "reverse:" asking for it.
    """
    rng = np.random.default_rng(seed)
    vocab = list(WORDS) + list(TEMPLATE_WORDS)
    lines = []
    for _ in range(docs):
        words = list(rng.choice(vocab, int(rng.integers(4, 20))))
        words[-1] += ":" if rng.random() < 0.3 else ""  # the template's punctuation, in other places
        kind, phrase = rng.integers(3), list(rng.choice(WORDS, int(rng.integers(2, 6)), replace=False))
        if kind == 1:
            words += phrase + ["and"] + phrase
        elif kind == 2:
            words += phrase + ["back"] + phrase[::-1]
        lines.append(" ".join(words) + ".")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n\n".join(lines) + "\n", encoding="utf-8")
    return path


def reverse_records(count: int, seed: int, lengths=(3, 4)) -> list[dict]:
    """Instruction records: {"prompt": "reverse: a b c", "response": "c b a"} (repeats possible)."""
    rng = np.random.default_rng(seed)
    records = []
    for _ in range(count):
        words = list(rng.choice(WORDS, int(rng.choice(lengths)), replace=False))
        records.append({"prompt": "reverse: " + " ".join(words), "response": " ".join(reversed(words))})
    return records


def held_out_records(count: int, training: list[dict], seed: int = 2) -> list[dict]:
    """`count` distinct records whose prompts the training records do not hold."""
    seen, chosen = {r["prompt"] for r in training}, {}
    for record in reverse_records(count * 4, seed):
        if record["prompt"] not in seen:
            chosen.setdefault(record["prompt"], record)
    return list(chosen.values())[:count]


def write_jsonl(path: pathlib.Path, records: list[dict]) -> pathlib.Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def decoder_config(cache: pathlib.Path, corpus: pathlib.Path, steps: int = 600, hidden: int = 128,
                   mlp_dim: int = 256) -> Config:
    """The tiny Llama-style decoder pretrained on pretraining_text."""
    return Config(
        name="sft_fixture_pretrain",
        model=ModelConfig(arch="llama", vocab_size=96, max_len=64, hidden=hidden, num_layers=2, num_heads=4,
                          num_kv_heads=2, mlp_dim=mlp_dim, dropout=0.0, attention_dropout=0.0, init_std=0.05,
                          layer_norm_eps=1e-5),
        data=DataConfig(source=f"files:{corpus}", seq_len=64, tokenizer_type="bpe", cache_dir=str(cache)),
        optim=OptimConfig(learning_rate=3e-3, warmup_steps=20, weight_decay=0.0),
        train=TrainConfig(steps=steps, batch_size=16, log_every=50, eval_every=0, eval_batches=2,
                          checkpoint_every=steps, progress_bar=False),
        mesh=MeshConfig(shape=(1, 1, 1)),
    )


def sft_config(pretrained: Config, data: pathlib.Path, steps: int = 150, lora_rank: int = 0,
               learning_rate: float = 3e-3, targets: tuple[str, ...] = LoraConfig().targets) -> Config:
    """Fine-tuning of that decoder on a reverse_records file; LoRA when lora_rank > 0."""
    lora = LoraConfig(rank=lora_rank, alpha=2.0 * max(lora_rank, 1), targets=targets)
    model = dataclasses.replace(pretrained.model, lora=lora)
    return Config(
        name="sft_fixture",
        model=model,
        data=DataConfig(format="sft", source=f"files:{data}", seq_len=64),
        optim=OptimConfig(learning_rate=learning_rate, warmup_steps=10, weight_decay=0.0),
        train=TrainConfig(steps=steps, batch_size=16, log_every=25, eval_every=0, eval_batches=2,
                          checkpoint_every=steps, progress_bar=False),
        mesh=MeshConfig(shape=(1, 1, 1)),
    )


def shared_pretrained(tmp_path_factory) -> tuple[pathlib.Path, Config]:
    """(workdir, config) of the tiny decoder pretrained once per test session."""
    base = tmp_path_factory.getbasetemp() / "meshlm-sft-pretrained"
    corpus = base / "corpus" / "words.txt"
    config = decoder_config(base / "cache", corpus)
    workdir = base / "workdir"
    if not (workdir / "checkpoints" / str(config.train.steps)).is_dir():
        from train.loop import train

        pretraining_text(corpus)
        train(config, workdir)
    return workdir, config


def exact_match(trained, records: list[dict], template, max_new_tokens: int = 16) -> tuple[float, list[str]]:
    """Greedy answers to the records' prompts (through the chat template) and their exact-match rate."""
    from train.generate.completions import Sampling, complete

    out = complete(trained, [r["prompt"] for r in records], Sampling(max_new_tokens=max_new_tokens), template)
    answers = [text.strip() for text in out.texts]
    hits = [a == r["response"] for a, r in zip(answers, records)]
    return float(np.mean(hits)), answers
