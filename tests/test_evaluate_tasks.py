"""Scores over checkpoints: `train.evaluate --tasks` (and --watch) writes each step's lm-eval scores
beside its loss in eval/step_N.json and TensorBoard; they are the scores of that step's weights."""

import json
import shutil

import pytest

from train.evaluate.evaluator import Evaluator, saved_steps, watch
from train.evaluate.harness import MeshLM
from train.evaluate.task_scores import TaskOptions

from tests.lm_eval_fixtures import DECODER_STEPS, decoder_workdir, expected_scores, write_tasks
from tests.network_guard import offline_hubs

TASKS = ("meshlm_mc", "meshlm_gen")


def _tensorboard_scalars(folder) -> dict:
    """{(tag, step): value} from the TFRecord event files in `folder` (tensorboardX's own protobufs)."""
    import struct

    from tensorboardX.proto.event_pb2 import Event

    scalars = {}
    for path in folder.glob("events.out.tfevents.*"):
        data, offset = path.read_bytes(), 0
        while offset < len(data):
            (length,) = struct.unpack("<Q", data[offset:offset + 8])
            event = Event.FromString(data[offset + 12:offset + 12 + length])  # after length and its crc
            offset += 12 + length + 4
            for value in event.summary.value:
                scalars[(value.tag, event.step)] = value.simple_value
    return scalars


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A copy of the two-step decoder workdir, the task folder, and each step's expected scores."""
    workdir = tmp_path_factory.mktemp("scores") / "work"
    shutil.copytree(decoder_workdir(tmp_path_factory), workdir)
    latest = MeshLM(workdir=str(workdir), batch_size=8, mesh="1x1x1")
    folder, answers, targets = write_tasks(tmp_path_factory.mktemp("tasks"), latest)
    expected = {DECODER_STEPS[-1]: expected_scores(latest, answers, targets)}
    for step in DECODER_STEPS[:-1]:
        expected[step] = expected_scores(MeshLM(workdir=str(workdir), step=step, batch_size=8, mesh="1x1x1"),
                                         answers, targets)
    assert expected[DECODER_STEPS[0]] != expected[DECODER_STEPS[-1]]  # other weights, other scores
    return workdir, folder, expected


def test_watch_with_tasks_writes_each_steps_scores_beside_its_loss(setup, monkeypatch):
    from lm_eval.tasks import TaskManager

    from train.evaluate.task_scores import _task_manager

    offline_hubs(monkeypatch)
    workdir, folder, expected = setup
    options = TaskOptions(TASKS, include_path=str(folder), bootstrap_iters=0)
    # The local folder covers both tasks: lm-eval's index of 14k built-in task files is not read.
    assert _task_manager(TaskManager, options).all_tasks == sorted(TASKS)
    make = lambda step: Evaluator(workdir, step, split="validation", batches=1, batch_size=8, mesh_shape=(1, 1, 1),
                                  tasks=options)
    lines = []
    assert watch(workdir, make, timeout=120, poll=0.1, echo=lines.append) == list(DECODER_STEPS)
    for step in DECODER_STEPS:
        record = json.loads((workdir / "eval" / f"step_{step}.json").read_text())
        assert record["loss"] > 0 and record["step"] == step
        # A decoder's loss is next-token loss, as in its training loop: nearly every token is a target.
        assert record["masked_tokens"] > 0.8 * record["tokens"]
        for task, metrics in expected[step].items():
            for metric, value in metrics.items():
                assert record["tasks"][task][metric] == pytest.approx(value), (step, task, metric)
    logged = [json.loads(line) for line in (workdir / "eval" / "metrics.jsonl").read_text().splitlines()]
    scores = {r["step"]: r for r in logged if r["split"] == "tasks"}
    assert sorted(scores) == list(DECODER_STEPS)
    assert scores[DECODER_STEPS[-1]]["meshlm_mc/acc"] == pytest.approx(expected[DECODER_STEPS[-1]]["meshlm_mc"]["acc"])
    tags = _tensorboard_scalars(workdir / "eval" / "tensorboard")
    for step in DECODER_STEPS:
        assert tags[("tasks/meshlm_gen/exact_match", step)] == pytest.approx(
            expected[step]["meshlm_gen"]["exact_match"])
        assert ("validation/loss", step) in tags
    assert saved_steps(workdir) == list(DECODER_STEPS)
