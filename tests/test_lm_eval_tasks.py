"""Offline lm-eval tasks end to end: a multiple-choice and a generation task as YAML over local JSONL,
scored through `lm_eval.simple_evaluate(model="meshlm")` and through the lm_eval CLI, with the hubs
switched off and a socket guard that fails (and logs) any connection beyond this machine."""

import json
import os
import pathlib
import subprocess
import sys

import pytest

from train.evaluate.harness import MeshLM

from tests.lm_eval_fixtures import decoder_workdir, expected_scores, write_tasks
from tests.network_guard import OFFLINE, guards, log_lines, offline_hubs, sitecustomize_dir

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tasks(tmp_path_factory):
    """The task folder, and the scores the decoder's latest step must get on it."""
    workdir = decoder_workdir(tmp_path_factory)
    lm = MeshLM(workdir=str(workdir), batch_size=8, mesh="1x1x1")
    folder, answers, targets = write_tasks(tmp_path_factory.mktemp("tasks"), lm)
    expected = expected_scores(lm, answers, targets)
    assert 0 < expected["meshlm_mc"]["acc"] < 1 and 0 < expected["meshlm_gen"]["exact_match"] < 1
    return workdir, folder, expected


def _check(results: dict, expected: dict) -> None:
    for task, metrics in expected.items():
        for metric, value in metrics.items():
            assert results[task][f"{metric},none"] == pytest.approx(value), (task, metric)


def test_simple_evaluate_with_model_meshlm_scores_local_tasks_offline(tasks, monkeypatch, tmp_path):
    import lm_eval
    from lm_eval.tasks import TaskManager

    workdir, folder, expected = tasks
    log = tmp_path / "network.log"
    for owner, name, replacement in guards(str(log)):
        monkeypatch.setattr(owner, name, replacement)
    offline_hubs(monkeypatch)
    out = lm_eval.simple_evaluate(
        model="meshlm", model_args={"workdir": str(workdir), "mesh": "1x1x1", "batch_size": 8},
        tasks=["meshlm_mc", "meshlm_gen"], task_manager=TaskManager(include_path=str(folder), include_defaults=False))
    _check(out["results"], expected)
    assert out["config"]["meshlm_step"] == 4 and out["config"]["meshlm_arch"] == "llama"
    assert log_lines(log) == []


@pytest.mark.slow
def test_the_lm_eval_cli_runs_local_tasks_offline(tasks, tmp_path):
    workdir, folder, expected = tasks
    log = tmp_path / "network.log"
    guard = sitecustomize_dir(tmp_path / "guard", log)
    env = {**os.environ, **OFFLINE, "PYTHONPATH": f"{guard}{os.pathsep}{ROOT}", "HF_HOME": str(tmp_path / "hf-home")}
    command = [sys.executable, "-m", "train.evaluate.lm_eval_cli", "--model", "meshlm",
               "--model_args", f"workdir={workdir},batch_size=8,mesh=1x1x1", "--tasks", "meshlm_mc,meshlm_gen",
               "--include_path", str(folder), "--output_path", str(tmp_path / "out")]
    run = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    results = json.loads(next((tmp_path / "out").rglob("results_*.json")).read_text())
    _check(results["results"], expected)
    assert "meshlm_mc" in run.stdout and "acc_norm" in run.stdout  # lm-eval's own table
    assert log_lines(log) == []
    # The guard is live in the child: it would have caught a download.
    fetch = "import urllib.request; urllib.request.urlopen('http://example.com')"
    probe = subprocess.run([sys.executable, "-c", fetch], env=env, capture_output=True, text=True, timeout=60)
    assert probe.returncode != 0 and "blocked by the test guard" in probe.stderr
