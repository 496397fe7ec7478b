"""Workdirs of a tiny decoder and a tiny encoder for the lm-eval tests, written once per session.

Their weights are random with a large spread (export_fixtures.random_params), so log-probabilities
are far from uniform and greedy decoding is decisive: comparisons of numbers have teeth. The
decoder has two checkpoints with different weights (steps 2 and 4), for scores over checkpoints.
Their data config reuses the session's small corpus and tokenizer (data_fixtures.py), so opening
them (which packs the validation rows) costs about a second.
"""

import dataclasses
import json
import pathlib

from train.config import Config, DataConfig, MeshConfig

from tests.data_fixtures import SMALL_CORPUS_BYTES, shared_dir, small_tokenizer
from tests.export_fixtures import random_params, tiny_export_config, write_checkpoint

MAX_LEN = 64
DECODER_STEPS = (2, 4)
ENCODER_STEP = 3


def _config(tmp_path_factory, vocab_size: int, **model) -> Config:
    config = tiny_export_config(vocab_size, max_len=MAX_LEN, **model)
    config.data = DataConfig(seq_len=32, max_corpus_bytes=SMALL_CORPUS_BYTES,
                             cache_dir=str(shared_dir(tmp_path_factory) / "corpus"))
    config.mesh = MeshConfig(shape=(1, 1, 1))
    config.train = dataclasses.replace(config.train, steps=DECODER_STEPS[-1], eval_batches=1, batch_size=8)
    return config


def decoder_workdir(tmp_path_factory) -> pathlib.Path:
    """A Llama-style decoder (GQA, tied head) saved at steps 2 and 4 with different random weights."""
    workdir = shared_dir(tmp_path_factory) / "lm-eval-decoder"
    if not (workdir / "checkpoints" / str(DECODER_STEPS[-1])).is_dir():
        tokenizer = small_tokenizer(tmp_path_factory)
        config = _config(tmp_path_factory, tokenizer.vocab_size, arch="llama", init_std=0.1, num_kv_heads=2,
                         layer_norm_eps=1e-5)
        for seed, step in enumerate(DECODER_STEPS):
            write_checkpoint(workdir, config, random_params(config.model, seed=seed), tokenizer,
                             mesh_shape=(1, 1, 1), step=step)
    return workdir


def encoder_workdir(tmp_path_factory) -> pathlib.Path:
    """A BERT-style encoder with random weights, saved at one step."""
    workdir = shared_dir(tmp_path_factory) / "lm-eval-encoder"
    if not (workdir / "checkpoints" / str(ENCODER_STEP)).is_dir():
        tokenizer = small_tokenizer(tmp_path_factory)
        config = _config(tmp_path_factory, tokenizer.vocab_size)
        write_checkpoint(workdir, config, random_params(config.model, seed=7), tokenizer, mesh_shape=(1, 1, 1),
                         step=ENCODER_STEP)
    return workdir


MC_DOCS = [  # (question, choices)
    ("Return the", ["value of the function", "cloud river stone", "of of of"]),
    ("The default is", ["None", "a list of strings", "seven"]),
    ("Raise an error if", ["the file does not exist", "blue", "the the"]),
    ("This module provides", ["functions for working with", "stone", "paper light water"]),
    ("If the argument is", ["omitted", "zero", "a string"]),
    ("Create a new", ["object", "river", "thread"]),
]
GEN_PROMPTS = ["Return the", "The default is", "If the argument is", "This module provides", "Create a new"]
GEN_KWARGS = {"until": [","], "max_gen_toks": 8, "do_sample": False}


def model_answers(lm) -> tuple[list[int], list[int], list[str]]:
    """What `lm` answers: best choice by log-likelihood, by log-likelihood per character, and continuations."""
    from lm_eval.api.instance import Instance

    pairs = [(q, " " + c) for q, choices in MC_DOCS for c in choices]
    requests = [Instance("loglikelihood", {}, pair, i) for i, pair in enumerate(pairs)]
    log_probs = iter([lp for lp, _ in lm.loglikelihood(requests, disable_tqdm=True)])
    best, best_norm = [], []
    for _, choices in MC_DOCS:
        scores = [next(log_probs) for _ in choices]
        best.append(max(range(len(choices)), key=lambda i: scores[i]))
        best_norm.append(max(range(len(choices)), key=lambda i: scores[i] / len(choices[i])))
    texts = lm.generate_until([Instance("generate_until", {}, (p, dict(GEN_KWARGS)), i)
                               for i, p in enumerate(GEN_PROMPTS)], disable_tqdm=True)
    return best, best_norm, texts


def expected_scores(lm, answers: list[int], targets: list[str]) -> dict[str, dict[str, float]]:
    """The scores lm-eval must report for `lm` on the tasks written with these answers and targets."""
    import re
    import string

    best, best_norm, texts = model_answers(lm)
    clean = lambda t: re.sub(f"[{re.escape(string.punctuation)}]", "", t.lower()).strip()  # noqa: E731
    return {"meshlm_mc": {"acc": sum(b == a for b, a in zip(best, answers)) / len(answers),
                          "acc_norm": sum(b == a for b, a in zip(best_norm, answers)) / len(answers)},
            "meshlm_gen": {"exact_match": sum(clean(t) == clean(g) for t, g in zip(texts, targets)) / len(targets)}}


def write_tasks(directory: pathlib.Path, lm) -> tuple[pathlib.Path, list[int], list[str]]:
    """Two lm-eval tasks over JSONL files, multiple choice (`meshlm_mc`) and generation (`meshlm_gen`).

    Their answers are what `lm` answers for most documents and something else for the rest, so
    its scores are known fractions (4/6 and 3/5), neither 0 nor 1.
    """
    best, _, texts = model_answers(lm)
    answers = [b if i < 4 else (b + 1) % 3 for i, b in enumerate(best)]
    targets = [t if i < 3 else "no such answer" for i, t in enumerate(texts)]
    directory.mkdir(parents=True, exist_ok=True)
    mc = [{"question": q, "choices": c, "answer": a} for (q, c), a in zip(MC_DOCS, answers)]
    gen = [{"prompt": p, "target": t} for p, t in zip(GEN_PROMPTS, targets)]
    for name, rows in (("mc", mc), ("gen", gen)):
        (directory / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    # datasets' own cache goes into the folder too (cache_dir), not ~/.cache/huggingface.
    (directory / "meshlm_mc.yaml").write_text(f"""\
task: meshlm_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {directory / 'mc.jsonl'}
  cache_dir: {directory / 'hf-datasets'}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{question}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: answer
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
""", encoding="utf-8")
    (directory / "meshlm_gen.yaml").write_text(f"""\
task: meshlm_gen
dataset_path: json
dataset_kwargs:
  data_files:
    test: {directory / 'gen.jsonl'}
  cache_dir: {directory / 'hf-datasets'}
test_split: test
output_type: generate_until
doc_to_text: "{{{{prompt}}}}"
doc_to_target: "{{{{target}}}}"
generation_kwargs: {json.dumps(GEN_KWARGS)}
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
    ignore_case: true
    ignore_punctuation: true
""", encoding="utf-8")
    return directory, answers, targets
