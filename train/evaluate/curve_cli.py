"""Where a run's curves are, and one of them as text: python -m train.evaluate.curve_cli --workdir=DIR.

Prints the paths of the TensorBoard events and metrics.jsonl, then held-out loss (by
default) at each evaluation, so a reader sees it fall without starting TensorBoard.
"""

from __future__ import annotations

from absl import flags

from train import program
from train.config import ConfigError
from train.metrics import EVENTS_DIR, METRICS_FILE, read_metrics, text_curve

RECORDS = flags.DEFINE_string("records", "eval", "which records: eval (held-out) or train")
METRIC = flags.DEFINE_string("metric", "loss", "which value: loss, accuracy, perplexity, ...")


def main(argv: list[str]) -> None:
    workdir = program.WORKDIR.value
    if not workdir:
        raise ConfigError("--workdir is required: the workdir of a training run")
    records = read_metrics(workdir)
    names = sorted({key for r in records if r.get("split") == RECORDS.value for key in r} - {"step", "split", "time"})
    if records and names and METRIC.value not in names:
        raise ConfigError(f"--metric={METRIC.value} is not among the {RECORDS.value} records; accepted: "
                          + ", ".join(names))
    print(f"TensorBoard events: {workdir}/{EVENTS_DIR} (tensorboard --logdir={workdir}/{EVENTS_DIR})")
    print(f"metrics by step:    {workdir}/{METRICS_FILE}")
    print(f"{'held-out' if RECORDS.value == 'eval' else RECORDS.value} {METRIC.value} over the run:")
    print(text_curve(records, split=RECORDS.value, metric=METRIC.value))


if __name__ == "__main__":
    program.run(main)
