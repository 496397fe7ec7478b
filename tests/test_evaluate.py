"""train.evaluate: per-step results equal the training loop's own evaluation; --watch evaluates each step once."""

import json
import shutil

import pytest

from train.config import DataConfig, MeshConfig, ModelConfig
from train.evaluate.evaluator import Evaluator, saved_steps, watch
from train.loop import train

from tests.data_fixtures import SMALL_CORPUS_BYTES, SMALL_VOCAB, shared_dir, small_tokenizer
from tests.train_fixtures import tiny_config


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A 4-step run with checkpoints (and loop evals) at steps 2 and 4.

    It reuses the session's small corpus and tokenizer (tests/data_fixtures.py) instead of
    building and training its own: the run's cost is then mostly tracing its steps.
    """
    base = tmp_path_factory.mktemp("evaluate")
    tokenizer = small_tokenizer(tmp_path_factory)
    (base / "work").mkdir()
    shutil.copyfile(tokenizer.path, base / "work" / "tokenizer.model")  # prepare_data reuses it
    config = tiny_config(steps=4, batch_size=8, checkpoint_every=2, keep_checkpoints=5, eval_every=2,
                         eval_batches=2, log_every=2, progress_bar=False)
    config.model = ModelConfig(vocab_size=SMALL_VOCAB, max_len=32, hidden=32, num_layers=2, num_heads=4,
                               mlp_dim=64)
    config.data = DataConfig(seq_len=32, max_corpus_bytes=SMALL_CORPUS_BYTES,
                             cache_dir=str(shared_dir(tmp_path_factory) / "corpus"))
    config.mesh = MeshConfig(shape=(1, 1, 1))
    train(config, base / "work")
    return base / "work"


def _options(**kw):
    return {"split": "validation", "batches": None, "batch_size": None, "mesh_shape": (1, 1, 1), **kw}


def test_evaluate_all_matches_the_loop_and_writes_json_and_tensorboard(workdir):
    evaluator = Evaluator(workdir, 4, **_options())
    results = {step: evaluator.evaluate(step) for step in saved_steps(workdir)}
    evaluator.close()
    assert sorted(results) == [2, 4]
    loop = {r["step"]: r for r in map(json.loads, (workdir / "metrics.jsonl").read_text().splitlines())
            if r["split"] == "eval"}
    for step, metrics in results.items():
        assert metrics["loss"] == pytest.approx(loop[step]["loss"], rel=1e-5)
        assert metrics["accuracy"] == pytest.approx(loop[step]["accuracy"], abs=1e-6)
        saved = json.loads((workdir / "eval" / f"step_{step}.json").read_text())
        assert saved["step"] == step and saved["perplexity"] == pytest.approx(metrics["perplexity"])
        assert saved["tokens"] > saved["masked_tokens"] > 0
    assert list((workdir / "eval" / "tensorboard").glob("events.out.tfevents.*"))
    assert results[4]["loss"] < results[2]["loss"] + 1.0  # a sanity bound, not a training claim


def test_other_split_and_batch_limit(workdir):
    evaluator = Evaluator(workdir, 4, **_options(split="train", batches=1, batch_size=4))
    metrics = evaluator.evaluate(4)
    evaluator.close()
    saved = json.loads((workdir / "eval" / "train" / "step_4.json").read_text())
    assert saved["batches"] == 1 and saved["batch_size"] == 4 and saved["tokens"] <= 4 * 32
    assert saved["loss"] == pytest.approx(metrics["loss"])


def test_watch_evaluates_each_new_step_once_and_stops_at_the_final_step(workdir, tmp_path):
    # A copy that has only step 2 yet: as if training were still running.
    shutil.copytree(workdir, tmp_path / "w", ignore=shutil.ignore_patterns("4", "eval"))
    lines = []
    make = lambda step: Evaluator(tmp_path / "w", step, **_options())
    assert watch(tmp_path / "w", make, timeout=0.5, poll=0.1, echo=lines.append) == [2]
    assert "--timeout" in lines[-1]
    shutil.copytree(workdir / "checkpoints" / "4", tmp_path / "w" / "checkpoints" / "4")
    assert watch(tmp_path / "w", make, timeout=60, poll=0.1, echo=lines.append) == [4]
    assert "final step 4" in lines[-1]
    assert sorted(p.name for p in (tmp_path / "w" / "eval").glob("step_*.json")) == ["step_2.json", "step_4.json"]
