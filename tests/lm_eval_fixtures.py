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


def write_tasks(directory: pathlib.Path) -> pathlib.Path:
    """Two lm-eval tasks over JSONL files written here: multiple choice (`meshlm_mc`) and generation (`meshlm_gen`)."""
    directory.mkdir(parents=True, exist_ok=True)
    mc = [{"question": q, "choices": c, "answer": a} for q, c, a in (
        ("Return the", ["value of the function", "cloud river stone", "of of of"], 0),
        ("The default is", ["None", "a list of strings", "seven"], 1),
        ("Raise an error if", ["the file does not exist", "blue", "the the"], 0),
        ("This module provides", ["functions for working with", "stone", "paper light water"], 2),
        ("If the argument is", ["omitted", "zero", "a string"], 1),
        ("Create a new", ["object", "river", "thread"], 2),
    )]
    gen = [{"prompt": p, "target": t} for p, t in (
        ("Return the", "value"), ("The default is", "None"), ("If the argument is", "omitted"),
        ("This module provides", "functions"), ("Create a new", "object"),
    )]
    for name, rows in (("mc", mc), ("gen", gen)):
        (directory / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    (directory / "meshlm_mc.yaml").write_text(f"""\
task: meshlm_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {directory / 'mc.jsonl'}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{question}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: answer
metric_list:
  - metric: acc
  - metric: acc_norm
""", encoding="utf-8")
    (directory / "meshlm_gen.yaml").write_text(f"""\
task: meshlm_gen
dataset_path: json
dataset_kwargs:
  data_files:
    test: {directory / 'gen.jsonl'}
test_split: test
output_type: generate_until
doc_to_text: "{{{{prompt}}}}"
doc_to_target: "{{{{target}}}}"
generation_kwargs:
  until: [","]
  max_gen_toks: 8
  do_sample: false
metric_list:
  - metric: exact_match
    ignore_case: true
    ignore_punctuation: true
""", encoding="utf-8")
    return directory
