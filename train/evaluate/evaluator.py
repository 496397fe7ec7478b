"""Evaluation of saved checkpoints: one evaluator per workdir, reused for every step, and --watch.

Masks are those of the training loop's evaluation (same seed, same batches), so with equal
batches and batch size the numbers match the loop's. With task options, each step also gets
lm-eval's benchmark scores (task_scores.py), written beside its loss. Results go to stdout,
workdir/eval/step_N.json (eval/<split>/ for other splits) and TensorBoard (scores under
tasks/<task>/<metric>).
"""

from __future__ import annotations

import json
import pathlib
import time
from typing import Callable

from train.evaluate.task_scores import TaskOptions


class Evaluator:
    """The data, compiled eval step and metric sinks of one workdir, reused for every step."""

    def __init__(self, workdir: pathlib.Path, step: int, *, split: str, batches: int | None,
                 batch_size: int | None, mesh_shape: tuple[int, ...], tasks: TaskOptions | None = None):
        from train.checkpoints.manager import Checkpoints
        from train.config import config_from_json
        from train.heldout import most_frequent_token
        from train.inputs import check_same_data, masking_spec, prepare_data
        from train.mesh import check_divisibility, make_mesh
        from train.metrics import MetricWriter
        from train.optimizer import make_optimizer
        from train.state import state_layout
        from train.steps import compile_eval_step

        checkpoints = Checkpoints(workdir, use_async=False)
        self.meta = checkpoints.restore_meta(step)
        checkpoints.close()
        self.config = config_from_json(json.dumps(self.meta["config"]))
        t = self.config.train
        self.workdir, self.split = workdir, split
        self.batches = t.eval_batches if batches is None else batches
        self.batch_size = batch_size or t.batch_size
        self.mesh = make_mesh(mesh_shape)
        check_divisibility(self.mesh, batch_size=self.batch_size, num_heads=self.config.model.num_heads,
                           num_kv_heads=self.config.model.resolved_kv_heads)
        self.data = prepare_data(self.config, workdir)
        check_same_data(self.meta, self.data, f"checkpoint step {step}")
        tx, _ = make_optimizer(self.config.optim, t.steps)
        self.layout = state_layout(self.config.model, tx, self.mesh)
        baseline = most_frequent_token(self.data.train, self.data.tokenizer.special_ids())
        # As in the training loop: masked-token loss for encoders, next-token loss (spec None) for decoders.
        spec = masking_spec(self.config, self.data, self.mesh) if self.config.model.arch == "bert" else None
        self.eval_step = compile_eval_step(self.layout, self.mesh, spec=spec, seed=t.seed, baseline_token=baseline)
        self.tasks = None
        if tasks is not None and tasks.tasks:
            from train.evaluate.task_scores import TaskScores
            from train.workdir import TrainedModel

            trained = TrainedModel(workdir, step, self.meta, self.config, self.data.tokenizer, self.mesh,
                                   self.layout, None)
            trained.data = self.data  # already prepared and checked above
            self.tasks = TaskScores(trained, tasks, batch_size=self.batch_size, workdir=str(workdir))
        self.out_dir = workdir / "eval" if split == "validation" else workdir / "eval" / split
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.writer = MetricWriter(self.out_dir)

    @property
    def final_step(self) -> int:
        return self.config.train.steps

    def result_path(self, step: int) -> pathlib.Path:
        return self.out_dir / f"step_{step}.json"

    def evaluate(self, step: int) -> dict[str, float]:
        """Restores the params of `step`, evaluates them (and the tasks) and writes the three sinks."""
        from train.heldout import evaluate
        from train.checkpoints.params import restore_params

        params = restore_params(self.workdir, step, self.layout.abstract["params"])
        rows = self.data.validation if self.split == "validation" else self.data.train
        metrics = evaluate(params, self.eval_step, rows, batch_size=self.batch_size,
                           max_batches=self.batches, mesh=self.mesh)
        self.writer.write(step, self.split, metrics)
        record = {"step": step, "split": self.split, "batches": self.batches, "batch_size": self.batch_size, **metrics}
        if self.tasks is not None:
            scores = self.tasks.scores(params, step)
            self.writer.write(step, "tasks", {f"{task}/{name}": value for task, values in scores.items()
                                              for name, value in values.items() if "_stderr" not in name})
            record["tasks"] = scores
            record["task_options"] = {"num_fewshot": self.tasks.options.num_fewshot, "limit": self.tasks.options.limit}
        self.result_path(step).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
        return metrics

    def close(self) -> None:
        self.writer.close()


def saved_steps(workdir: pathlib.Path) -> list[int]:
    """Finalized checkpoint steps (a save still in progress is not listed)."""
    from train.checkpoints.manager import Checkpoints

    if not (workdir / "checkpoints").is_dir():
        return []
    checkpoints = Checkpoints(workdir, use_async=False)
    steps = sorted(checkpoints.all_steps())
    checkpoints.close()
    return steps


def watch(workdir: pathlib.Path, make: Callable[[int], Evaluator], *, timeout: float, poll: float,
          echo=print) -> list[int]:
    """Evaluates each new step once (skipping ones with results); stops at the final step or timeout.

    A damaged step is reported once and skipped, as training falls back past it.
    """
    from train.checkpoints.manager import DamagedCheckpoint

    deadline = time.monotonic() + timeout
    evaluator, done, damaged = None, [], set()
    while True:
        steps = [step for step in saved_steps(workdir) if step not in damaged]
        for step in reversed(steps) if evaluator is None else []:  # made from the newest readable step
            try:
                evaluator = make(step)
                break
            except DamagedCheckpoint as e:
                damaged.add(step)
                echo(f"warning: {e}; skipped")
        for step in steps if evaluator is not None else []:
            if step in damaged or evaluator.result_path(step).exists():
                continue
            try:
                evaluator.evaluate(step)
                done.append(step)
            except DamagedCheckpoint as e:
                damaged.add(step)
                echo(f"warning: {e}; skipped")
        if evaluator is not None and evaluator.final_step in steps:
            echo(f"reached the final step {evaluator.final_step}; evaluated steps {done}")
            break
        if time.monotonic() >= deadline:
            echo(f"--timeout reached before the final step; evaluated steps {done}")
            break
        time.sleep(min(poll, max(deadline - time.monotonic(), 0.0)))
    if evaluator is not None:
        evaluator.close()
    return done
