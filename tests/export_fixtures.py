"""Workdirs holding one checkpoint of a tiny BERT with random (non-trivial) weights, for export tests."""

import dataclasses
import json
import pathlib
import shutil

import jax
import numpy as np
from flax import nnx

from data.tokenizer import Tokenizer
from train.checkpoints.manager import Checkpoints
from train.config import Config, ModelConfig
from train.mesh import make_mesh
from train.optimizer import make_optimizer
from train.state import param_shardings, state_layout
from train.trainable import trainable_part

from tests.train_fixtures import tiny_config


def tiny_export_config(vocab_size: int, **model) -> Config:
    config = tiny_config()
    config.model = dataclasses.replace(config.model, vocab_size=vocab_size, **model)
    return config


def random_params(model_cfg: ModelConfig, seed: int = 0) -> dict:
    """Host params with every entry random: biases and norm scales too, so a swapped tensor shows."""
    _, abstract, _ = param_shardings(model_cfg, make_mesh((1, 1, 1)))
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda x: rng.normal(0.0, 0.3, x.shape).astype(x.dtype), abstract)


def write_checkpoint(workdir: pathlib.Path, config: Config, params: dict, tokenizer: Tokenizer,
                     mesh_shape=(2, 2, 2), step: int = 7, meta: dict | None = None) -> pathlib.Path:
    """Saves {step, params, fresh opt_state} sharded over `mesh_shape`, as the train loop would."""
    workdir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(tokenizer.path, workdir / "tokenizer.model")
    mesh = make_mesh(mesh_shape)
    tx, _ = make_optimizer(config.optim, config.train.steps)
    layout = state_layout(config.model, tx, mesh)
    sharded = jax.device_put(params, layout.shardings["params"])
    opt_state = jax.jit(tx.init, out_shardings=layout.shardings["opt_state"])(trainable_part(sharded))
    state = {"step": jax.device_put(np.int32(step), layout.shardings["step"]), "params": sharded,
             "opt_state": opt_state}
    checkpoints = Checkpoints(workdir, use_async=False)
    checkpoints.save(step, state, {"config": json.loads(config.to_json()), "tokenizer_sha256": tokenizer.sha256(),
                                   **(meta or {})})
    checkpoints.wait()
    checkpoints.close()
    return workdir


def jax_logits(config: Config, params: dict, tokens: np.ndarray, segment_ids: np.ndarray,
               positions: np.ndarray) -> np.ndarray:
    """The meshlm model's own logits on one device, the reference every export is held to."""
    graphdef, _, _ = param_shardings(config.model, make_mesh((1, 1, 1)))
    model = nnx.merge(graphdef, jax.tree.map(np.asarray, params))
    return np.asarray(model(tokens, segment_ids, positions))


def fixed_batch(vocab_size: int, pad_id: int, rows: int = 3, length: int = 12, seed: int = 1):
    """Token ids with padding at the end of two rows; one document per row, positions from 0."""
    rng = np.random.default_rng(seed)
    tokens = rng.integers(5, vocab_size, (rows, length)).astype(np.int32)
    lengths = [length, length - 3, length - 5][:rows]
    segment_ids = np.zeros_like(tokens)
    for row, n in enumerate(lengths):
        segment_ids[row, :n] = 1
        tokens[row, n:] = pad_id
    positions = np.broadcast_to(np.arange(length, dtype=np.int32), tokens.shape).copy()
    return tokens, segment_ids, positions


def hf_logits(model_class, folder, tokens, segment_ids, positions):
    """Logits of a Transformers model loaded from `folder` (which must load with no missing keys)."""
    import torch

    model, info = model_class.from_pretrained(folder, attn_implementation="eager", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    with torch.no_grad():
        out = model.eval()(input_ids=torch.tensor(tokens, dtype=torch.long),
                           attention_mask=torch.tensor(segment_ids > 0, dtype=torch.long),
                           position_ids=torch.tensor(positions, dtype=torch.long))
    return out.logits.float().numpy(), model


TRAINED_STEPS = 150


def trained_workdir(tmp_path_factory, arch: str) -> pathlib.Path:
    """A tiny encoder (arch="bert") or decoder ("llama") trained on the session's small corpus.

    Trained once per session (the workdir is kept under the session's temp folder) so that
    every module comparing an export's behaviour with meshlm's shares it: 150 steps give
    predictions far from uniform, so fill-mask ranks and greedy continuations mean something.
    """
    from train.config import DataConfig, MeshConfig, OptimConfig
    from train.loop import train
    from tests.data_fixtures import SMALL_CORPUS_BYTES, SMALL_VOCAB, shared_dir, small_tokenizer

    workdir = shared_dir(tmp_path_factory) / f"trained-{arch}"
    if (workdir / "trained").is_file():
        return workdir
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    shutil.copyfile(small_tokenizer(tmp_path_factory).path, workdir / "tokenizer.model")
    config = tiny_config(steps=TRAINED_STEPS, batch_size=16, checkpoint_every=TRAINED_STEPS, keep_checkpoints=1,
                         eval_every=0, eval_batches=1, log_every=TRAINED_STEPS, progress_bar=False)
    decoder = dict(num_kv_heads=2, layer_norm_eps=1e-5, init_std=0.05) if arch == "llama" else {}
    config.model = ModelConfig(arch=arch, vocab_size=SMALL_VOCAB, max_len=64, hidden=64, num_layers=2, num_heads=4,
                               mlp_dim=128, dropout=0.0, attention_dropout=0.0, **decoder)
    config.data = DataConfig(seq_len=64, max_corpus_bytes=SMALL_CORPUS_BYTES,
                             cache_dir=str(shared_dir(tmp_path_factory) / "corpus"))
    config.optim = OptimConfig(learning_rate=3e-3, warmup_steps=10, weight_decay=0.0)
    config.mesh = MeshConfig(shape=(1, 1, 1))
    train(config, workdir)
    (workdir / "trained").touch()
    return workdir
