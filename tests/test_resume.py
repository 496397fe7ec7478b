"""Resume: a run restarted from a checkpoint ends bitwise equal to an uninterrupted run."""

import dataclasses
import json
import shutil

import jax
import numpy as np
import pytest

from data.documents import DataError
from data.sentencepiece_training import train_tokenizer
from train.checkpoints.manager import Checkpoints
from train.config import ConfigError, DataConfig, MeshConfig, ModelConfig
from train.loop import train
from train.optimizer import make_optimizer
from train.state import state_layout
from train.mesh import make_mesh

from tests.train_fixtures import tiny_config


def _config(tmp_path, steps=6):
    config = tiny_config(steps=steps, batch_size=8, checkpoint_every=2, keep_checkpoints=5,
                         eval_every=0, eval_batches=1, log_every=1, progress_bar=False)
    config.model = ModelConfig(vocab_size=400, max_len=32, hidden=32, num_layers=2, num_heads=4,
                               mlp_dim=64, dropout=0.1, attention_dropout=0.1)
    config.data = DataConfig(seq_len=32, max_corpus_bytes=150_000, cache_dir=str(tmp_path / "cache"))
    config.mesh = MeshConfig(shape=(1, 1, 1))
    return config


def _final_state(config, workdir, step):
    mesh = make_mesh(config.mesh.shape)
    tx, _ = make_optimizer(config.optim, config.train.steps)
    checkpoints = Checkpoints(workdir, use_async=False)
    state, _ = checkpoints.restore(step, state_layout(config.model, tx, mesh).abstract)
    checkpoints.close()
    return state


@pytest.mark.slow
def test_resume_is_bitwise_equal_to_an_uninterrupted_run(tmp_path):
    config = _config(tmp_path)
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    train(config, straight)
    # The resumed run starts from the straight run's step-4 checkpoint, as after a crash.
    resumed.mkdir()
    shutil.copy(straight / "tokenizer.model", resumed)
    shutil.copytree(straight / "data", resumed / "data")
    for step in ("2", "4"):
        shutil.copytree(straight / "checkpoints" / step, resumed / "checkpoints" / step)
    train(config, resumed)
    a, b = _final_state(config, straight, 6), _final_state(config, resumed, 6)
    assert int(a["step"]) == int(b["step"]) == 6
    for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=jax.tree_util.keystr(path))
    # The resumed run's metrics pick up where the checkpoint left off, without repeats.
    lines = (resumed / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [5, 6, 6]


@pytest.mark.slow
def test_resume_refuses_another_model_or_tokenizer(tmp_path):
    config = _config(tmp_path, steps=2)
    train(config, tmp_path / "w")
    wider = dataclasses.replace(config, model=dataclasses.replace(config.model, hidden=64))
    with pytest.raises(ConfigError, match="different model.*hidden"):
        train(wider, tmp_path / "w")
    other = train_tokenizer(next((tmp_path / "cache").glob("builtin-*/train.txt")), tmp_path / "bpe.model",
                            vocab_size=400, model_type="bpe")
    shutil.copy(other.path, tmp_path / "w" / "tokenizer.model")
    with pytest.raises(DataError, match="tokenizer.model has changed since it was written"):  # its .sha256
        train(dataclasses.replace(config, train=dataclasses.replace(config.train, steps=4)), tmp_path / "w")
    (tmp_path / "w" / "tokenizer.model.sha256").unlink()  # a tokenizer without a record: the checkpoint's
    with pytest.raises(ConfigError, match="tokenizer_sha256"):
        train(dataclasses.replace(config, train=dataclasses.replace(config.train, steps=4)), tmp_path / "w")
