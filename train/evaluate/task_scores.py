"""Benchmark scores of one checkpoint after another: lm-eval tasks run on the evaluator's loaded model.

The harness model (harness.py) is built once from the evaluator's mesh, layout and
tokenizer; each step only swaps the params in, so compiled programs are reused across
checkpoints. Task names resolve against `include_path` first (local YAML files); lm-eval's
own index of built-in tasks (~14k files, seconds to build) is read only when needed.
"""

from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING, Any

from train.config import ConfigError

if TYPE_CHECKING:
    from train.workdir import TrainedModel


@dataclasses.dataclass(frozen=True)
class TaskOptions:
    """Which lm-eval tasks to run and how (the evaluator's --tasks flags)."""

    tasks: tuple[str, ...]
    include_path: str = ""
    num_fewshot: int | None = None
    limit: float | None = None
    bootstrap_iters: int = 100_000


class TaskScores:
    """lm-eval's scores of `options.tasks` for any step of one model."""

    def __init__(self, trained: "TrainedModel", options: TaskOptions, *, batch_size: int, workdir: str):
        try:
            from lm_eval.tasks import TaskManager
        except ModuleNotFoundError as e:
            if e.name != "lm_eval":
                raise
            raise ConfigError("--tasks needs lm-evaluation-harness: install meshlm's eval extra "
                              "(pip install -e '.[eval]', or MESHLM_EXTRAS=eval ./launch.sh ...)") from None
        from train.evaluate.harness import MeshLM

        self.options = options
        self.lm = MeshLM(workdir=workdir, trained=trained, batch_size=batch_size)
        self.task_manager = _task_manager(TaskManager, options)

    def scores(self, params: Any, step: int) -> dict[str, dict[str, float]]:
        """{task: {metric: value}} for the params of `step` (stderr included where lm-eval gives it)."""
        import lm_eval

        self.lm.use_params(params, step)
        o = self.options
        results = lm_eval.simple_evaluate(
            model=self.lm, tasks=list(o.tasks), task_manager=self.task_manager, num_fewshot=o.num_fewshot,
            limit=o.limit, log_samples=False, bootstrap_iters=o.bootstrap_iters)
        return flat_scores(results["results"])


def _task_manager(task_manager_class, options: TaskOptions):
    """Local tasks alone when they cover every name; else lm-eval's built-in index as well."""
    if options.include_path:
        local = task_manager_class(include_path=options.include_path, include_defaults=False)
        if all(name in local.all_tasks for name in options.tasks):
            return local
    manager = task_manager_class(include_path=options.include_path or None)
    unknown = [name for name in options.tasks if name not in manager.all_tasks]
    if unknown:
        where = f" or in --include_path={options.include_path}" if options.include_path else ""
        raise ConfigError(f"--tasks: {unknown} are not lm-eval tasks{where}; list them with `lm_eval ls tasks`")
    return manager


def flat_scores(results: dict[str, dict[str, Any]]) -> dict[str, dict[str, float]]:
    """lm-eval's {"task": {"acc,none": x, "alias": ...}} as {"task": {"acc": x}} (other filters: "acc,filter")."""
    flat: dict[str, dict[str, float]] = {}
    for task, metrics in results.items():
        for key, value in metrics.items():
            if "," not in key or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            name, filter_name = key.split(",", 1)
            if math.isfinite(value):
                flat.setdefault(task, {})[name if filter_name == "none" else key] = float(value)
    return flat
