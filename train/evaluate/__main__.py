"""Evaluates checkpoints of a workdir: one, all, or each new one as training writes it.

    python -m train.evaluate --workdir=DIR [--step=N | --all | --watch] [--split=validation]
                             [--batches=N] [--batch_size=N] [--mesh=1,1,1] [--timeout=SECONDS]
                             [--tasks=hellaswag,arc_easy [--include_path=DIR] [--num_fewshot=K] [--limit=N]]

Metrics (loss, accuracy, perplexity, masked and total token counts, the most-frequent-token
baseline) go to stdout, to workdir/eval/step_N.json (eval/<split>/ for other splits) and to
TensorBoard under the same folder. Masks are those of the training loop's evaluation (same
seed, same batches), so with equal --batches and --batch_size the numbers match the loop's.
--tasks adds lm-evaluation-harness benchmark scores of each step (the eval extra), beside its
loss in step_N.json ("tasks") and in TensorBoard (tasks/<task>/<metric>).
--watch is the side job of a pod: it evaluates each new checkpoint once and exits after the
config's final step, or after --timeout seconds.
"""

from __future__ import annotations

import pathlib
import sys

from absl import flags

from train import program
from train.checkpoints.manager import DamagedCheckpoint
from train.evaluate.evaluator import Evaluator, watch

_WORKDIR = program.WORKDIR
_STEP = program.STEP
_ALL = flags.DEFINE_bool("all", False, "Evaluate every saved checkpoint.")
_WATCH = flags.DEFINE_bool("watch", False, "Evaluate each new checkpoint once, until the final step.")
_SPLIT = flags.DEFINE_enum("split", "validation", ["validation", "train"], "Packed rows to evaluate on.")
_BATCHES = flags.DEFINE_integer("batches", None, "Batches per evaluation (default: config's train.eval_batches; 0: all).")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", None, "Rows per batch (default: config's train.batch_size).")
_MESH = flags.DEFINE_list("mesh", ["1", "1", "1"], "Mesh shape (data, fsdp, tensor[, sequence]) of this job; one entry may be -1.")
_TIMEOUT = flags.DEFINE_float("timeout", 3600.0, "--watch: give up after this many seconds.")
_POLL = flags.DEFINE_float("poll", 10.0, "--watch: seconds between looks for new checkpoints.")
_TASKS = flags.DEFINE_list("tasks", [], "lm-eval tasks to score each step on (needs the eval extra).")
_INCLUDE_PATH = flags.DEFINE_string("include_path", "", "--tasks: a folder of lm-eval task YAML files.")
_NUM_FEWSHOT = flags.DEFINE_integer("num_fewshot", None, "--tasks: few-shot examples (default: each task's).")
_LIMIT = flags.DEFINE_float("limit", None, "--tasks: examples per task (a count, or a fraction if < 1).")
_BOOTSTRAP = flags.DEFINE_integer("bootstrap_iters", 100_000, "--tasks: resamples for lm-eval's stderr (0: none).")


def main(argv: list[str]) -> None:
    del argv
    from train.config import ConfigError
    from train.checkpoints.params import read_checkpoint, saved_steps as existing_steps

    if sum([_STEP.value is not None, _ALL.value, _WATCH.value]) > 1:
        raise ConfigError("pass at most one of --step, --all and --watch")
    workdir = pathlib.Path(_WORKDIR.value or "")
    try:
        mesh_shape = tuple(int(s) for s in _MESH.value)
    except ValueError:
        raise ConfigError(f"--mesh={','.join(_MESH.value)}; accepted: integers such as 1,1,1 or -1,1,1") from None
    tasks = None
    if _TASKS.value:
        from train.evaluate.task_scores import TaskOptions

        tasks = TaskOptions(tuple(_TASKS.value), include_path=_INCLUDE_PATH.value, num_fewshot=_NUM_FEWSHOT.value,
                            limit=_LIMIT.value, bootstrap_iters=_BOOTSTRAP.value)
    elif _INCLUDE_PATH.value or _NUM_FEWSHOT.value is not None or _LIMIT.value is not None:
        raise ConfigError("--include_path, --num_fewshot and --limit go with --tasks; pass --tasks=TASK[,TASK...]")
    options = dict(split=_SPLIT.value, batches=_BATCHES.value, batch_size=_BATCH_SIZE.value, mesh_shape=mesh_shape,
                   tasks=tasks)
    if _WATCH.value:
        if not _WORKDIR.value:
            raise ConfigError("--workdir is required: the workdir of a training run")
        watch(workdir, lambda step: Evaluator(workdir, step, **options), timeout=_TIMEOUT.value, poll=_POLL.value)
        return
    evaluators: list[Evaluator] = []  # one, made for the first step whose metadata reads

    def evaluate(step: int, meta: dict) -> None:
        if not evaluators:
            evaluators.append(Evaluator(workdir, step, **options))
        evaluators[0].evaluate(step)

    if _ALL.value:
        for step in existing_steps(_WORKDIR.value or ""):
            try:
                read_checkpoint(workdir, step, evaluate)
            except DamagedCheckpoint as e:  # --all goes on past a damaged step
                print(f"warning: {e}; skipped", file=sys.stderr)
    else:  # --step, or the newest step whose files read
        read_checkpoint(workdir, _STEP.value, evaluate)
    if not evaluators:
        raise ConfigError(f"every checkpoint of --workdir={workdir} is damaged; nothing was evaluated")
    evaluators[0].close()
    print(f"results in {evaluators[0].out_dir}")


if __name__ == "__main__":
    program.run(main)
