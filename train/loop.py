"""The training loop: data, mesh, state (fresh or resumed), steps, metrics, evals, checkpoints."""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import time
from typing import Any

import jax

from data.batches import StepBatches
from data.store import PreparedData, prepare_builtin
from train.checkpoint import Checkpoints
from train.config import Config, ConfigError, config_from_json
from train.evaluation import evaluate, most_frequent_token
from train.masking import MaskingSpec, prediction_budget
from train.mesh import check_divisibility, make_mesh, to_global
from train.metrics import MetricWriter, ProgressBar
from train.optimizer import make_optimizer
from train.state import init_state, state_layout
from train.steps import compile_eval_step, compile_train_step


def default_cache_dir() -> pathlib.Path:
    return pathlib.Path(os.environ.get("MESHLM_CACHE", pathlib.Path.home() / ".cache" / "meshlm"))


def prepare_data(config: Config, workdir: pathlib.Path) -> PreparedData:
    """The corpus, tokenizer and packed rows for this config (built once, then reused)."""
    d = config.data
    return prepare_builtin(
        workdir, cache_dir=d.cache_dir or default_cache_dir(), seq_len=d.seq_len,
        vocab_size=config.model.vocab_size, model_type=d.tokenizer_type,
        max_bytes=d.max_corpus_bytes or None)


def masking_spec(config: Config, data: PreparedData) -> MaskingSpec:
    tok, d = data.tokenizer, config.data
    return MaskingSpec(
        mask_id=tok.mask_id, vocab_size=config.model.vocab_size,
        special_ids=tuple(int(i) for i in tok.special_ids()), probability=d.mlm_probability,
        mask_ratio=d.mask_token_ratio, random_ratio=d.random_token_ratio,
        word_start_table=tok.word_start_table() if d.whole_word_masking else None,
        max_predictions=prediction_budget(d.seq_len, d.mlm_probability))


def checkpoint_meta(config: Config, data: PreparedData) -> dict[str, Any]:
    return {"config": json.loads(config.to_json()), "tokenizer_sha256": data.tokenizer.sha256()}


def check_resumable(config: Config, meta: dict[str, Any], step: int) -> None:
    """A checkpoint resumes only into the same model architecture."""
    saved = config_from_json(json.dumps(meta["config"])).model
    if saved != config.model:
        diff = {f.name: (getattr(saved, f.name), getattr(config.model, f.name))
                for f in dataclasses.fields(saved) if getattr(saved, f.name) != getattr(config.model, f.name)}
        raise ConfigError(f"checkpoint step {step} was written by a different model: {diff} (saved, now); "
                          "use another --workdir or the saved model settings")


def train(config: Config, workdir: pathlib.Path) -> dict[str, float]:
    """Trains (or resumes) to config.train.steps; returns the final held-out metrics."""
    primary = jax.process_index() == 0
    log = print if primary else (lambda *a, **k: None)
    t = config.train
    data = prepare_data(config, workdir)
    log(data.corpus.describe())
    log(f"tokenizer: {data.tokenizer.path} ({data.tokenizer.vocab_size} pieces); "
        f"rows of {config.data.seq_len}: {data.train.num_rows} train, {data.validation.num_rows} validation")

    mesh = make_mesh(config.mesh.shape)
    check_divisibility(mesh, batch_size=t.batch_size, num_heads=config.model.num_heads)
    tx, schedule = make_optimizer(config.optim, t.steps)
    layout = state_layout(config.model, tx, mesh)
    log(f"model: {layout.param_count / 1e6:.2f}M parameters; mesh {dict(mesh.shape)} over {mesh.devices.size} devices")

    checkpoints = Checkpoints(workdir, keep=t.keep_checkpoints)
    start = checkpoints.latest_step()
    if start is None:
        state, start = init_state(config.model, tx, layout, mesh, t.seed), 0
    else:
        check_resumable(config, checkpoints.restore_meta(start), start)
        state, _ = checkpoints.restore(start, layout.abstract)
        log(f"resumed from checkpoint step {start} in {checkpoints.directory}")
    meta = checkpoint_meta(config, data)

    spec = masking_spec(config, data)
    train_step = compile_train_step(layout, mesh, tx=tx, schedule=schedule, spec=spec, seed=t.seed)
    baseline = most_frequent_token(data.train, data.tokenizer.special_ids())
    eval_step = compile_eval_step(layout, mesh, spec=spec, seed=t.seed, baseline_token=baseline)
    batches = StepBatches(data.train, t.batch_size, t.seed)
    writer = MetricWriter(workdir, enabled=primary)
    bar = ProgressBar(t.steps, start, enabled=primary and t.progress_bar)

    def run_eval(step: int) -> dict[str, float]:
        metrics = evaluate(state["params"], eval_step, data.validation, batch_size=t.batch_size,
                           max_batches=t.eval_batches, mesh=mesh)
        writer.write(step, "eval", metrics)
        return metrics

    window = _Window()
    pending = None
    final: dict[str, float] = {}
    for step in range(start, t.steps):
        batch = to_global(batches.batch(step, jax.process_index(), jax.process_count()), mesh)
        state, metrics = train_step(state, batch)
        if step == start:  # the first call compiles: time it apart from throughput
            started = time.perf_counter()
            jax.block_until_ready(metrics)
            log(f"first step (compile and run) took {time.perf_counter() - window.started:.1f}s")
            window.started = started
        if pending is not None:  # one step late: the host waits on step-1 while step runs
            _record(window, writer, bar, *pending, t.log_every)
        pending = (step + 1, metrics)
        done = step + 1
        save = done % t.checkpoint_every == 0 or done == t.steps
        evaluate_now = (t.eval_every and done % t.eval_every == 0) or done == t.steps
        if save or evaluate_now:  # these wait on this step anyway: log it first
            _record(window, writer, bar, *pending, t.log_every, force=done == t.steps)
            pending = None
        if save:
            checkpoints.save(done, state, meta)
        if evaluate_now:
            eval_started = time.perf_counter()
            final = run_eval(done)
            window.started += time.perf_counter() - eval_started  # not training throughput
    if start >= t.steps:  # nothing left to train: report the saved model
        final = run_eval(start)
    checkpoints.wait()
    checkpoints.close()
    bar.close()
    writer.close()
    if final:
        ratio = final["accuracy"] / max(final["baseline_accuracy"], 1e-9)
        log(f"held-out MLM accuracy {final['accuracy']:.4f} vs most-frequent-token baseline "
            f"{final['baseline_accuracy']:.4f} ({ratio:.1f}x); loss {final['loss']:.4f}, "
            f"perplexity {final['perplexity']:.2f}")
    return final


@dataclasses.dataclass
class _Window:
    """Sums of train metrics since the last log line."""

    sums: dict[str, float] = dataclasses.field(default_factory=dict)
    steps: int = 0
    started: float = dataclasses.field(default_factory=time.perf_counter)


def _record(window: _Window, writer: MetricWriter, bar: ProgressBar, step: int, metrics: Any,
            log_every: int, force: bool = False) -> None:
    """Adds one step's fetched metrics to the window; writes a line every `log_every` steps."""
    values = {k: float(v) for k, v in jax.device_get(metrics).items()}
    for key, value in values.items():
        window.sums[key] = window.sums.get(key, 0.0) + value
    window.steps += 1
    bar.update(step, f"loss {values['loss']:.3f}")
    if step % log_every and not force:
        return
    elapsed = time.perf_counter() - window.started
    n = window.steps
    line = {k: window.sums[k] / n for k in ("loss", "accuracy", "grad_norm")}
    line["learning_rate"] = values["learning_rate"]
    line["tokens_per_sec"] = window.sums["tokens"] / max(elapsed, 1e-9)
    line["steps_per_sec"] = n / max(elapsed, 1e-9)
    writer.write(step, "train", line)
    window.sums, window.steps, window.started = {}, 0, time.perf_counter()

