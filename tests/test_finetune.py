"""Fine-tuning: the classifier's layout, encoder loading onto any mesh, training, resume, predict, errors."""

import dataclasses
import json
import os
import pathlib
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest
from flax import nnx

from model import BertClassifier, BertMLM, ModelConfig
from tests.data_fixtures import SMALL_VOCAB, small_tokenizer
from train.checkpoints.manager import Checkpoints
from train.config import Config, ConfigError, DataConfig, MeshConfig, OptimConfig, TrainConfig
from train.finetune.classifier_loop import PretrainedEncoder, finetune
from train.finetune.classifier_steps import classifier_factory, finetune_optimizer
from train.mesh import make_mesh
from train.optimizer import make_optimizer
from train.finetune.classify import predict
from train.state import init_state, state_layout
from train.config import TaskConfig

ROOT = pathlib.Path(__file__).resolve().parents[1]
MODEL = ModelConfig(vocab_size=SMALL_VOCAB, max_len=32, hidden=32, num_layers=2, num_heads=4, mlp_dim=64,
                    dropout=0.0, attention_dropout=0.0)
WORDS = {"pos": "good great fine nice lovely", "neg": "bad awful poor dull wrong"}


def _pretrained(tmp_path_factory) -> pathlib.Path:
    """A pretraining workdir (tokenizer + one BertMLM checkpoint, not trained), made once per session."""
    workdir = tmp_path_factory.getbasetemp() / "meshlm-finetune-pretrained"
    if (workdir / "checkpoints").is_dir():
        return workdir
    tok = small_tokenizer(tmp_path_factory)
    workdir.mkdir()
    shutil.copy(tok.path, workdir / "tokenizer.model")
    config = Config(name="pre", model=MODEL, data=DataConfig(seq_len=32), train=TrainConfig(steps=10))
    mesh = make_mesh((1, 1, 1))
    tx, _ = make_optimizer(config.optim, config.train.steps)
    layout = state_layout(config.model, tx, mesh)
    state = init_state(config.model, tx, layout, mesh, seed=7)
    checkpoints = Checkpoints(workdir, use_async=False)
    meta = {"config": json.loads(config.to_json()), "tokenizer_sha256": tok.sha256(), "data_key": "none"}
    checkpoints.save(10, state, meta)
    checkpoints.wait()
    checkpoints.close()
    return workdir


def _task_files(tmp_path, n=48):
    """A two-label task where the label shows in the words used."""
    rng = np.random.default_rng(0)
    for split, count in (("train", n), ("validation", n // 2)):
        with open(tmp_path / f"{split}.jsonl", "w") as f:
            for i in range(count):
                label = ("pos", "neg")[i % 2]
                words = rng.choice(WORDS[label].split(), 4).tolist() + ["the", "film"]
                f.write(json.dumps({"text": " ".join(rng.permutation(words)), "label": label}) + "\n")
    return tmp_path / "train.jsonl", tmp_path / "validation.jsonl"


def _config(train_path, validation_path, epochs=2, learning_rate=3e-3, **task) -> Config:
    return Config(
        name="ft", model=MODEL, data=DataConfig(seq_len=16),
        optim=OptimConfig(learning_rate=learning_rate, warmup_steps=2, weight_decay=0.0),
        train=TrainConfig(batch_size=8, log_every=2, checkpoint_every=100, progress_bar=False),
        mesh=MeshConfig(shape=(1, 1, 1)),
        task=TaskConfig(train_path=str(train_path), validation_path=str(validation_path), epochs=epochs, **task))


def test_classifier_has_the_encoder_paths_of_bert_mlm_and_hf_head_names():
    classifier = nnx.eval_shape(lambda: BertClassifier(MODEL, 3, rngs=nnx.Rngs(0)))
    mlm = nnx.eval_shape(lambda: BertMLM(MODEL, rngs=nnx.Rngs(0)))
    paths = {path: x.shape for path, x in nnx.to_flat_state(nnx.state(classifier))}
    mlm_paths = {path: x.shape for path, x in nnx.to_flat_state(nnx.state(mlm)) if path[0] != "head"}
    assert {p: s for p, s in paths.items() if p[0] in ("embeddings", "layers")} == mlm_paths
    assert {p: s for p, s in paths.items() if p[0] not in ("embeddings", "layers")} == {
        ("pooler", "kernel"): (32, 32), ("pooler", "bias"): (32,),
        ("classifier", "kernel"): (32, 3), ("classifier", "bias"): (3,)}
    names = {path: x.out_sharding for path, x in nnx.to_flat_state(nnx.state(classifier))}
    assert names[("classifier", "kernel")] == ("transform", "classes")


def test_pooling_and_token_types_change_the_logits():
    tokens = jax.numpy.asarray([[2, 7, 8, 3, 9, 3, 0, 0]], jax.numpy.int32)
    segments = (tokens != 0).astype(jax.numpy.int32)
    positions = jax.numpy.arange(8, dtype=jax.numpy.int32)[None] * segments
    types = jax.numpy.asarray([[0, 0, 0, 0, 1, 1, 0, 0]], jax.numpy.int32)
    one_layer = dataclasses.replace(MODEL, num_layers=1)  # eager calls are slow: keep it small
    cls = BertClassifier(one_layer, 2, rngs=nnx.Rngs(0))
    mean = BertClassifier(one_layer, 2, pooling="mean", rngs=nnx.Rngs(0))
    plain = cls(tokens, segments, positions)
    assert plain.shape == (1, 2) and plain.dtype == np.float32
    assert not np.allclose(plain, mean(tokens, segments, positions))
    assert not np.allclose(plain, cls(tokens, segments, positions, token_types=types))
    np.testing.assert_array_equal(plain, cls(tokens, segments, positions, token_types=types * 0))


def test_encoder_restores_onto_another_mesh(tmp_path_factory, tmp_path):
    pretrained = _pretrained(tmp_path_factory)
    config = _config(*_task_files(tmp_path))
    mesh = make_mesh((2, 2, 2))  # written on one device, read onto eight
    encoder = PretrainedEncoder(str(pretrained), config).load(mesh)
    tx, _ = make_optimizer(config.optim, 10)
    saved, _ = Checkpoints(pretrained, use_async=False).restore(10, state_layout(MODEL, tx, make_mesh((1, 1, 1))).abstract)
    for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(encoder),
                            jax.tree.leaves({k: saved["params"][k] for k in encoder})):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=jax.tree_util.keystr(path))
    layout = state_layout(MODEL, tx, mesh, classifier_factory(MODEL, 2, config.task))
    word = encoder["embeddings"]["word"]["embedding"]
    assert word.sharding == layout.shardings["params"]["embeddings"]["word"]["embedding"]


def test_init_from_of_another_model_gets_one_line(tmp_path_factory, tmp_path):
    pretrained = _pretrained(tmp_path_factory)
    config = _config(*_task_files(tmp_path))
    config.model = dataclasses.replace(MODEL, hidden=64, mlp_dim=128)
    with pytest.raises(ConfigError, match=r"holds a different model than the config: \{'hidden': \(32, 64\), "
                                          r"'mlp_dim': \(64, 128\)\} \(pretrained, config\)"):
        finetune(config, tmp_path / "out", str(pretrained))
    assert not (tmp_path / "out" / "tokenizer.model").exists()


def test_body_learning_rate_ratio_scales_only_the_encoder_updates():
    params = {"embeddings": {"w": np.ones(3, np.float32)}, "pooler": {"kernel": np.ones(3, np.float32)}}
    cfg = OptimConfig(learning_rate=1e-2, warmup_steps=0, schedule="constant", weight_decay=0.0, clip_norm=0.0)
    tx, _ = finetune_optimizer(cfg, 10, body_ratio=0.1)
    grads = jax.tree.map(np.ones_like, params)
    updates, _ = tx.update(grads, tx.init(params), params)
    np.testing.assert_allclose(updates["pooler"]["kernel"], -1e-2, rtol=1e-4)
    np.testing.assert_allclose(updates["embeddings"]["w"], -1e-3, rtol=1e-4)


@pytest.mark.slow
def test_finetune_learns_resumes_exactly_and_predicts(tmp_path_factory, tmp_path):
    pretrained = _pretrained(tmp_path_factory)
    files = _task_files(tmp_path)
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    settings = dict(epochs=5, body_learning_rate_ratio=0.5, pooling="mean")
    final = finetune(_config(*files, learning_rate=1e-2, **settings), straight, str(pretrained))
    assert final["accuracy"] >= 0.9 and 0 <= final["f1"] <= 1
    assert json.loads((straight / "labels.json").read_text()) == {"labels": ["neg", "pos"]}
    evals = [json.loads(line) for line in (straight / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in evals if r["split"] == "eval"] == [1, 2, 3, 4, 5]
    # A run restarted from the epoch-3 checkpoint (as after a crash) ends equal to the straight run.
    resumed.mkdir()
    for name in ("tokenizer.model", "labels.json"):
        shutil.copy(straight / name, resumed)
    shutil.copytree(straight / "checkpoints" / "18", resumed / "checkpoints" / "18")
    finetune(_config(*files, learning_rate=1e-2, **settings), resumed, str(pretrained))
    records = [json.loads(line) for line in (resumed / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records if r["split"] == "eval"] == [4, 5]  # it resumed, not restarted
    factory = classifier_factory(MODEL, 2, TaskConfig(pooling="mean"))
    tx, _ = finetune_optimizer(OptimConfig(), 1, 0.5)
    abstract = state_layout(MODEL, tx, make_mesh((1, 1, 1)), factory).abstract
    a, _ = Checkpoints(straight, use_async=False).restore(30, abstract)
    b, _ = Checkpoints(resumed, use_async=False).restore(30, abstract)
    for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=jax.tree_util.keystr(path))
    labels, probs = predict(straight, ["great lovely nice film", "awful dull wrong film"])
    assert labels == ["neg", "pos"] and probs.shape == (2, 2)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    assert probs[0, 1] > 0.5 > probs[1, 1]


def _cli(module, *args):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu"}
    env.pop("XLA_FLAGS", None)
    return subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)


@pytest.mark.slow
def test_cli_finetunes_predicts_and_reports_data_errors_in_one_line(tmp_path_factory, tmp_path):
    pretrained = _pretrained(tmp_path_factory)
    train_path, validation_path = _task_files(tmp_path)
    flags = ["--config=configs/finetune_cls.py", f"--init_from={pretrained}",
             f"--config.task.train_path={train_path}", f"--config.task.validation_path={validation_path}",
             "--config.model.vocab_size=800", "--config.model.max_len=32", "--config.model.hidden=32",
             "--config.model.mlp_dim=64", "--config.data.seq_len=16",
             "--config.train.batch_size=8", "--config.task.epochs=1"]
    done = _cli("train.finetune", *flags, f"--workdir={tmp_path / 'out'}")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "encoder from" in done.stdout and "validation accuracy" in done.stdout
    shown = _cli("train.finetune.predict_cli", f"--workdir={tmp_path / 'out'}", "--text=good great film")
    assert shown.returncode == 0, shown.stderr[-3000:]
    assert "probabilities: neg " in shown.stdout and " pos " in shown.stdout
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "a", "label": "pos"}\n{"text": "b", "label": "neg"}\n{"text": "c", "class": "neg"}\n')
    failed = _cli("train.finetune", *flags, f"--config.task.train_path={bad}", f"--workdir={tmp_path / 'out2'}")
    assert failed.returncode == 2
    assert failed.stderr.strip().splitlines() == [
        f"error: {bad} line 3 has no field 'label' (fields: text, class); set --config.task.label_field to the right name"]
