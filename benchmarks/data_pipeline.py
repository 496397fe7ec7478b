"""Host pipeline tokens/s beside the tokens/s the tiny and base train steps consume, same run.

Builds a token store from a prefix of the built-in corpus (parallel tokenization), packs it,
then times the prefetched step-indexed batches (data/prefetch.py) at the tiny and base
batch shapes, and times a few real train steps of configs/bert_tiny.py and
configs/bert_base.py on one device of this machine. The base step runs a smaller batch
(--base_batch) so a CPU finishes it; tokens/s per step hardly depends on the batch there.

    ./launch.sh run benchmarks.data_pipeline [--corpus_bytes=3000000] [--base_batch=2]
"""

from __future__ import annotations

import json
import os
import pathlib
import tempfile
import time

import jax
import numpy as np
from absl import app, flags

from data.batches import StepBatches
from data.builtin_corpus import builtin_corpus, default_cache_dir, read_documents
from data.prefetch import prefetch_batches
from data.pipeline import prepare, tokenize_to_store
from data.sentencepiece_training import load_or_train_tokenizer
from train.config import load_config
from train.masking import MaskingSpec, prediction_budget
from train.mesh import make_mesh, to_global
from train.optimizer import make_optimizer
from train.state import init_state, state_layout
from train.steps import compile_train_step

_CORPUS_BYTES = flags.DEFINE_integer("corpus_bytes", 3_000_000, "Built-in corpus prefix to store.")
_PIPELINE_STEPS = flags.DEFINE_integer("pipeline_steps", 400, "Batches timed per shape.")
_BASE_BATCH = flags.DEFINE_integer("base_batch", 2, "Rows per base train step (0: the config's).")
_TRAIN_STEPS = flags.DEFINE_integer("train_steps", 3, "Timed train steps per model.")
_WORKERS = flags.DEFINE_integer("workers", 0, "Tokenizer processes for the store (0: auto).")


def build_rows(workdir: pathlib.Path, seq_lens: tuple[int, ...]) -> dict:
    """A store of the corpus prefix, packed at each seq_len; prints the tokenization speed."""
    corpus = builtin_corpus(default_cache_dir(), _CORPUS_BYTES.value)
    tokenizer = load_or_train_tokenizer(workdir / "tok.model", corpus.train, vocab_size=4000,
                                        model_type="bpe")
    with open(workdir / "corpus.jsonl", "w", encoding="utf-8") as f:
        for split in (corpus.train, corpus.validation):
            f.writelines(json.dumps({"text": doc}) + "\n" for doc in read_documents(split))
    started = time.perf_counter()
    manifest = tokenize_to_store(f"files:{workdir}/corpus.jsonl", str(tokenizer.path),
                       str(workdir / "store"), workers=_WORKERS.value, shard_docs=1024)
    seconds = time.perf_counter() - started
    tokens = sum(info["tokens"] for info in manifest["splits"].values())
    print(f"prepare: {tokens:,} tokens in "
          f"{sum(len(i['shards']) for i in manifest['splits'].values())} shards, "
          f"{seconds:.1f}s ({tokens / seconds:,.0f} tokens/s, workers={_WORKERS.value or 'auto'})")
    return {L: prepare(workdir / f"w{L}", f"store:{workdir / 'store'}", seq_len=L,
                             vocab_size=4000).train for L in seq_lens}


def pipeline_tokens_per_sec(rows, batch_size: int, steps: int) -> float:
    """Tokens/s of prefetched batches of this shape, as the loop consumes them."""
    batches = StepBatches(rows, batch_size, seed=0)
    list(prefetch_batches(batches, 0, 4))  # warm the epoch order cache
    started = time.perf_counter()
    for batch in prefetch_batches(batches, 10, 10 + steps):
        assert batch["tokens"].shape == (batch_size, rows.seq_len)
    return steps * batch_size * rows.seq_len / (time.perf_counter() - started)


def step_tokens_per_sec(config_path: str, batch_size: int, steps: int) -> tuple[float, int]:
    """Tokens/s one device trains at with this config's model and seq_len (compile excluded)."""
    config = load_config(config_path)
    m, d = config.model, config.data
    batch_size = batch_size or config.train.batch_size
    mesh = make_mesh((1, 1, 1), jax.devices()[:1])
    tx, schedule = make_optimizer(config.optim, config.train.steps)
    layout = state_layout(m, tx, mesh)
    spec = MaskingSpec(mask_id=4, vocab_size=m.vocab_size, special_ids=(0, 1, 2, 3, 4),
                       probability=d.mlm_probability,
                       max_predictions=prediction_budget(d.seq_len, d.mlm_probability))
    step = compile_train_step(layout, mesh, tx=tx, schedule=schedule, spec=spec, seed=0)
    state = init_state(m, tx, layout, mesh, seed=0)
    tokens = np.random.default_rng(0).integers(5, m.vocab_size, (batch_size, d.seq_len))
    tokens[:, 0] = 2
    batch = to_global({"tokens": tokens.astype(np.int32),
                       "segment_ids": np.ones(tokens.shape, np.int32),
                       "positions": np.tile(np.arange(d.seq_len, dtype=np.int32),
                                            (batch_size, 1))}, mesh)
    state, metrics = step(state, batch)  # compile
    jax.block_until_ready(metrics)
    started = time.perf_counter()
    for _ in range(steps):
        state, metrics = step(state, batch)
    jax.block_until_ready(metrics)
    return steps * batch_size * d.seq_len / (time.perf_counter() - started), batch_size


def main(argv: list[str]) -> None:
    del argv
    tiny, base = load_config("configs/bert_tiny.py"), load_config("configs/bert_base.py")
    print(f"device: {jax.devices()[0].device_kind} ({jax.default_backend()}), "
          f"{os.cpu_count()} CPU cores")
    with tempfile.TemporaryDirectory() as scratch:
        rows = build_rows(pathlib.Path(scratch), (tiny.data.seq_len, base.data.seq_len))
        pipe_tiny = pipeline_tokens_per_sec(rows[tiny.data.seq_len], tiny.train.batch_size,
                                            _PIPELINE_STEPS.value)
        pipe_base = pipeline_tokens_per_sec(rows[base.data.seq_len], base.train.batch_size,
                                            max(_PIPELINE_STEPS.value // 8, 10))
    step_tiny, tiny_batch = step_tokens_per_sec("configs/bert_tiny.py", 0, _TRAIN_STEPS.value)
    step_base, base_batch = step_tokens_per_sec("configs/bert_base.py", _BASE_BATCH.value,
                                                _TRAIN_STEPS.value)
    print(f"pipeline at the tiny shape ({tiny.train.batch_size}x{tiny.data.seq_len}): "
          f"{pipe_tiny:12,.0f} tokens/s")
    print(f"pipeline at the base shape ({base.train.batch_size}x{base.data.seq_len}): "
          f"{pipe_base:12,.0f} tokens/s")
    print(f"bert_tiny train step ({tiny_batch}x{tiny.data.seq_len}):  "
          f"{step_tiny:12,.0f} tokens/s -> pipeline/step {pipe_tiny / step_tiny:8.1f}x "
          f"(need >= 20x)")
    print(f"bert_base train step ({base_batch}x{base.data.seq_len}):   "
          f"{step_base:12,.0f} tokens/s -> pipeline/step {pipe_base / step_base:8.1f}x")


if __name__ == "__main__":
    app.run(main)
