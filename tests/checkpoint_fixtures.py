"""Tiny end-to-end configs for the checkpoint tests, with the corpus and tokenizer made once.

Every workdir is seeded with the same trained tokenizer and packed rows, so a test pays
only for its own training steps; the resulting runs are identical to unseeded ones.
"""

import pathlib
import shutil

from train.config import Config, DataConfig, MeshConfig, ModelConfig

from tests.train_fixtures import tiny_config


def checkpoint_config(cache_dir: pathlib.Path, steps: int = 6, **train) -> Config:
    """A 2-layer encoder on 150 KB of the built-in corpus; checkpoints every 2 steps."""
    config = tiny_config(**{"steps": steps, "batch_size": 8, "checkpoint_every": 2, "keep_checkpoints": 5,
                            "eval_every": 0, "eval_batches": 1, "log_every": 1, "progress_bar": False, **train})
    config.model = ModelConfig(vocab_size=400, max_len=32, hidden=32, num_layers=2, num_heads=4,
                               mlp_dim=64, dropout=0.1, attention_dropout=0.1)
    config.data = DataConfig(seq_len=32, max_corpus_bytes=150_000, cache_dir=str(cache_dir))
    config.mesh = MeshConfig(shape=(1, 1, 1))
    return config


def prepared_seed(tmp_path_factory) -> pathlib.Path:
    """A workdir holding the tokenizer and packed rows of checkpoint_config, built once per session."""
    base = tmp_path_factory.getbasetemp() / "meshlm-checkpoint-seed"
    seed = base / "workdir"
    if not (seed / "tokenizer.model").is_file():
        from train.inputs import prepare_data

        prepare_data(checkpoint_config(base / "cache"), seed)
    return seed


def seeded_workdir(seed: pathlib.Path, workdir: pathlib.Path) -> pathlib.Path:
    """A fresh workdir with the seed's tokenizer and packed rows copied in."""
    workdir.mkdir(parents=True)
    shutil.copy(seed / "tokenizer.model", workdir)
    shutil.copytree(seed / "data", workdir / "data")
    return workdir


def cache_of(seed: pathlib.Path) -> pathlib.Path:
    return seed.parent / "cache"
