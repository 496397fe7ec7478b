"""Evaluates checkpoints of a workdir: one, all, or each new one as training writes it.

    python -m train.evaluate --workdir=DIR [--step=N | --all | --watch] [--split=validation]
                             [--batches=N] [--batch_size=N] [--mesh=1,1,1] [--timeout=SECONDS]

Metrics (loss, accuracy, perplexity, masked and total token counts, the most-frequent-token
baseline) go to stdout, to workdir/eval/step_N.json (eval/<split>/ for other splits) and to
TensorBoard under the same folder. Masks are those of the training loop's evaluation (same
seed, same batches), so with equal --batches and --batch_size the numbers match the loop's.
--watch is the side job of a pod: it evaluates each new checkpoint once and exits after the
config's final step, or after --timeout seconds.
"""

from __future__ import annotations

import pathlib

from absl import flags

from train import program
from train.evaluate.evaluator import Evaluator, saved_steps, watch

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


def main(argv: list[str]) -> None:
    del argv
    from train.config import ConfigError
    from train.checkpoints.params import resolve_step

    if sum([_STEP.value is not None, _ALL.value, _WATCH.value]) > 1:
        raise ConfigError("pass at most one of --step, --all and --watch")
    workdir = pathlib.Path(_WORKDIR.value or "")
    try:
        mesh_shape = tuple(int(s) for s in _MESH.value)
    except ValueError:
        raise ConfigError(f"--mesh={','.join(_MESH.value)}; accepted: integers such as 1,1,1 or -1,1,1") from None
    options = dict(split=_SPLIT.value, batches=_BATCHES.value, batch_size=_BATCH_SIZE.value, mesh_shape=mesh_shape)
    if _WATCH.value:
        if not _WORKDIR.value:
            raise ConfigError("--workdir is required: the workdir of a training run")
        watch(workdir, lambda step: Evaluator(workdir, step, **options), timeout=_TIMEOUT.value, poll=_POLL.value)
        return
    steps = saved_steps(workdir) if _ALL.value else [resolve_step(_WORKDIR.value or "", _STEP.value)]
    if not steps:
        resolve_step(_WORKDIR.value or "", None)  # says why there is nothing to evaluate
    evaluator = Evaluator(workdir, steps[-1], **options)
    for step in steps:
        evaluator.evaluate(step)
    evaluator.close()
    print(f"results in {evaluator.out_dir}")


if __name__ == "__main__":
    program.run(main)
