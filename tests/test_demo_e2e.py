"""The demo config end to end through the CLI: train, evaluate, resume, fill masks."""

import json
import os
import pathlib
import re
import subprocess
import sys

import pytest

from train.metrics import text_curve

ROOT = pathlib.Path(__file__).resolve().parents[1]
# Small enough for CI: a 400 KB slice of the built-in corpus and a 2k vocabulary.
QUICK = ["--config=configs/bert_tiny.py", "--config.data.max_corpus_bytes=400000",
         "--config.model.vocab_size=2000", "--config.train.checkpoint_every=2",
         "--config.train.eval_every=2", "--config.train.eval_batches=2", "--config.train.log_every=1"]


def _run(module, *args, cache):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MESHLM_CACHE": str(cache), "JAX_PLATFORMS": "cpu"}
    env.pop("XLA_FLAGS", None)  # the CLI runs on one device, as a user's laptop would
    result = subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


@pytest.mark.slow
def test_demo_trains_resumes_and_fills_masks(tmp_path):
    workdir, cache = tmp_path / "work", tmp_path / "cache"
    first = _run("train.main", *QUICK, f"--workdir={workdir}", "--config.train.steps=4", cache=cache)
    assert "built-in corpus:" in first and "resumed" not in first
    assert "held-out MLM accuracy" in first and "baseline" in first
    accuracy, baseline, printed = re.search(r"MLM accuracy ([\d.]+) vs .* baseline ([\d.]+) \(([\d.]+)x\)", first).groups()
    # two decimals, floored (the inputs are printed rounded to 4 places, so only roughly checkable here)
    assert re.fullmatch(r"\d+\.\d\d", printed) and abs(float(accuracy) / float(baseline) - float(printed)) < 0.02
    assert sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()) == [2, 4]
    tokenizer_mtime = (workdir / "tokenizer.model").stat().st_mtime_ns

    second = _run("train.main", *QUICK, f"--workdir={workdir}", "--config.train.steps=6", cache=cache)
    assert "resumed from checkpoint step 4" in second
    assert (workdir / "tokenizer.model").stat().st_mtime_ns == tokenizer_mtime, "tokenizer retrained"
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    train_steps = [r["step"] for r in records if r["split"] == "train"]
    assert train_steps == [1, 2, 3, 4, 5, 6], train_steps
    assert {"loss", "accuracy", "learning_rate", "grad_norm", "tokens_per_sec"} <= set(records[0])
    evals = [r for r in records if r["split"] == "eval"]
    assert [r["step"] for r in evals] == [2, 4, 6]
    assert {"loss", "accuracy", "perplexity", "baseline_accuracy"} <= set(evals[-1])
    assert list((workdir / "tensorboard").glob("events.out.tfevents.*"))

    filled = _run("train.generate.fill_mask_cli", f"--workdir={workdir}", "--examples=3", "--candidates=4", cache=cache)
    assert "checkpoint step 6" in filled
    assert filled.count("[MASK]") == 3 and filled.count("hidden word:") == 3
    custom = _run("train.generate.fill_mask_cli", f"--workdir={workdir}", "--text=The [MASK] returns a list.",
                  cache=cache)
    assert "The [MASK] returns a list." in custom

    curve = _run("train.evaluate.curve_cli", f"--workdir={workdir}", cache=cache)
    assert f"{workdir}/tensorboard" in curve and f"{workdir}/metrics.jsonl" in curve
    assert [int(step) for step in re.findall(r"step (\d+) ", curve)] == [2, 4, 6]


def test_text_curve_spans_lowest_to_highest_and_keeps_the_ends():
    records = [{"step": s, "split": "eval", "loss": 10.0 - s} for s in range(1, 41)]
    records.insert(3, {"step": 3, "split": "train", "loss": 99.0})
    lines = text_curve(records, max_points=5, width=20).splitlines()
    assert [int(line.split()[1]) for line in lines] == [1, 11, 21, 30, 40]
    bars = [line.count("#") for line in lines]
    assert bars[0] == 20 and bars[-1] == 1 and bars == sorted(bars, reverse=True)
    assert "no eval accuracy" in text_curve(records, metric="accuracy")
