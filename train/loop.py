"""The training loop: mesh, data, state (fresh or resumed), steps, metrics, evals, checkpoints.

Pretraining and supervised fine-tuning share it: fine-tuning's data is the config's
(`data.format=sft` rows carry a loss mask that the causal loss honours), and its start is
a pretrained model's weights (`start_params`, used only when the workdir has no checkpoint
yet; a rerun resumes from the workdir like any run).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import pathlib
import time
from typing import Any, Callable

import jax
from jax.sharding import Mesh

from data.batches import StepBatches
from data.prefetch import prefetch_batches
from data.pipeline import PreparedData
from train.checkpoints.manager import Checkpoints
from train.config import Config, ConfigError, config_from_json
from train.distributed import primary_first
from train.heldout import evaluate, most_frequent_token
from train.flops import mfu, non_embedding_params, peak_flops_per_device, train_flops_per_token
from train.inputs import check_documents_per_row, check_same_data, data_identity, masking_spec, prepare_data
from train.mesh import attention_kernel, check_divisibility, make_mesh, to_global
from train.metrics import MetricWriter, ProgressBar
from train.nonfinite import NonFiniteGuard
from train import peers
from train.optimizer import make_optimizer
from train.profiler import StepProfiler
from train.preemption import Preemption
from train.state import StateLayout, TrainState, init_state, state_layout
from train.steps import compile_eval_step, compile_train_step, params_finite

# Model fields that decide parameter shapes and dtypes; the rest may change on resume.
_SHAPE_FIELDS = ("vocab_size", "max_len", "hidden", "num_layers", "num_heads", "head_dim",
                 "mlp_dim", "param_dtype", "arch", "num_kv_heads", "tie_embeddings")


def check_resumable(config: Config, meta: dict[str, Any], data: PreparedData, step: int) -> None:
    """A checkpoint resumes only into the same parameter shapes (adapters included), tokenizer and data."""
    saved = config_from_json(json.dumps(meta["config"])).model
    diff = {f: (getattr(saved, f), getattr(config.model, f)) for f in _SHAPE_FIELDS
            if getattr(saved, f) != getattr(config.model, f)}
    adapters = lambda m: (m.lora.rank, tuple(m.lora.targets))
    if adapters(saved) != adapters(config.model):
        diff["lora (rank, targets)"] = (adapters(saved), adapters(config.model))
    if diff:
        raise ConfigError(f"checkpoint step {step} was written by a different model: {diff} (saved, now); "
                          "use another --workdir or the saved model settings")
    check_same_data(meta, data, f"checkpoint step {step}")


StartParams = Callable[[Any, Mesh], Any]  # fresh params (born sharded) -> the params to start from


def _start_state(config: Config, data: PreparedData, layout: StateLayout, tx, mesh,
                 checkpoints: Checkpoints, log: Callable[[str], None],
                 start_params: StartParams | None) -> tuple[TrainState, int, dict]:
    """The latest sound checkpoint restored onto this mesh, or a fresh state born sharded."""
    restored = checkpoints.restore_latest(
        layout.abstract, lambda step, meta: check_resumable(config, meta, data, step), log)
    if restored is None:
        state = init_state(config.model, tx, layout, mesh, config.train.seed)
        if start_params is not None:  # the optimizer state (zero moments) does not depend on the values
            state = {**state, "params": start_params(state["params"], mesh)}
        return state, 0, {}
    state, meta, start = restored
    log(f"resumed from checkpoint step {start} in {checkpoints.directory}")
    return state, start, meta


def train(config: Config, workdir: pathlib.Path, *, start_params: StartParams | None = None,
          meta: dict[str, Any] | None = None) -> dict[str, float]:
    """Trains (or resumes) to config.train.steps; returns the final held-out metrics.

    `start_params` gives a fresh run its starting weights (fine-tuning); `meta` is recorded
    in every checkpoint beside the config (e.g. where those weights came from).
    """
    with contextlib.ExitStack() as cleanup:  # gives the workdir's writer lease back, whatever happens
        return _train(config, workdir, cleanup, start_params, meta)


def _train(config: Config, workdir: pathlib.Path, cleanup: contextlib.ExitStack, start_params: StartParams | None,
           meta: dict[str, Any] | None) -> dict[str, float]:
    primary = jax.process_index() == 0
    t = config.train
    preemption = Preemption()  # first, so a SIGTERM during setup is not lost
    mesh = make_mesh(config.mesh.shape)  # before the data: a bad mesh fails in a second
    check_divisibility(mesh, batch_size=t.batch_size, num_heads=config.model.num_heads,
                       num_kv_heads=config.model.resolved_kv_heads)
    kernel = attention_kernel(config.model, mesh, config.data.seq_len)
    bar = ProgressBar(t.steps, 0, enabled=primary and t.progress_bar)
    log = bar.write if primary else (lambda line: None)
    checkpoints = Checkpoints(workdir, keep=t.keep_checkpoints, best_metric=t.keep_best_metric,
                              best_mode=t.keep_best_mode)
    cleanup.push(lambda kind, error, traceback: checkpoints.settle(error))
    # Before the data: a second job on this workdir stops here, and partial saves of runs that
    # died are removed before anything is written.
    checkpoints.claim(log)
    peers.watch_workdir(workdir, checkpoints.release)  # if a process dies, the others name the step to resume
    data = primary_first(lambda: prepare_data(config, workdir))
    log(data.describe())
    log(f"tokenizer: {data.tokenizer.path} ({data.tokenizer.vocab_size} pieces); "
        f"rows of {config.data.seq_len}: {data.train.num_rows} train, {data.validation.num_rows} validation")
    if kernel == "cudnn":
        check_documents_per_row(data, config.model.max_segments_per_row)
    tx, schedule = make_optimizer(config.optim, t.steps)
    layout = state_layout(config.model, tx, mesh)
    frozen = layout.param_count - layout.trainable_count
    trains = (f" ({layout.trainable_count:,} trainable: LoRA adapters, "
              f"{100 * layout.trainable_count / layout.param_count:.2f}%; the base is frozen)" if frozen else "")
    log(f"model: {layout.param_count / 1e6:.2f}M parameters{trains}; mesh {dict(mesh.shape)} over "
        f"{mesh.devices.size} devices; attention: {kernel} (model.attention_impl={config.model.attention_impl})")

    state, start, saved_meta = _start_state(config, data, layout, tx, mesh, checkpoints, log, start_params)
    guard = NonFiniteGuard(t.skip_nonfinite, saved_meta.get("nonfinite_skips", 0), log,
                           on_stop=lambda: _last_good(checkpoints), vocab_size=config.model.vocab_size)
    if primary:  # only once the run is known to fit the workdir
        (workdir / "config.json").write_text(config.to_json())
    meta = {**(meta or {}), "config": json.loads(config.to_json()), **data_identity(data)}
    spec = masking_spec(config, data, mesh) if config.model.arch == "bert" else None  # None: next-token LM
    train_step = compile_train_step(layout, mesh, tx=tx, schedule=schedule, spec=spec, seed=t.seed,
                                    skip_nonfinite=t.skip_nonfinite, vocab_size=config.model.vocab_size)
    baseline = most_frequent_token(data.train, data.tokenizer.special_ids())
    eval_step = compile_eval_step(layout, mesh, spec=spec, seed=t.seed, baseline_token=baseline)
    batches = StepBatches(data.train, t.batch_size, t.seed)
    writer = MetricWriter(workdir, enabled=primary, echo=bar.write, resume_step=start)
    bar.update(start)

    def run_eval(step: int) -> dict[str, float]:
        metrics = evaluate(state["params"], eval_step, data.validation, batch_size=t.batch_size,
                           max_batches=t.eval_batches, mesh=mesh)
        writer.write(step, "eval", metrics)
        return metrics

    def flush(pending: tuple[int, Any], force: bool = False) -> None:
        """Fetches one step's metrics once, checks they are finite and records them."""
        done, metrics = pending[0], jax.device_get(pending[1])
        guard.check(done, metrics)
        _record(window, writer, bar, done, metrics, t.log_every, force=force)

    profiler = StepProfiler(workdir, t.profile_start, t.profile_steps, enabled=primary)
    window = _throughput_window(config, layout, spec and spec.max_predictions, mesh)
    pending = None
    final: dict[str, float] = {}
    host_batches = prefetch_batches(batches, start, t.steps, jax.process_index(), jax.process_count())
    for step in range(start, t.steps):
        batch = to_global(next(host_batches), mesh)
        profiler.before_step(step)
        state, metrics = train_step(state, batch)
        profiler.after_step(step, metrics)
        checkpoints.poll()  # a failed background save stops the run now, not at the next save
        if step == start:  # the first call compiles: time it apart from throughput
            started = time.perf_counter()
            jax.block_until_ready(metrics)
            log(f"first step (compile and run) took {time.perf_counter() - window.started:.1f}s")
            window.started = started
        if pending is not None:  # one step late: the host waits on step-1 while step runs
            flush(pending)
        pending = (step + 1, metrics)
        done = step + 1
        preempted = preemption.reached(done)
        save = done % t.checkpoint_every == 0 or done == t.steps or preempted
        evaluate_now = (t.eval_every and done % t.eval_every == 0) or done == t.steps
        if save or evaluate_now:  # these wait on this step anyway: log it first
            flush(pending, force=done == t.steps or preempted)  # never saves a non-finite state
            pending = None
        if evaluate_now:  # before the save, so the checkpoint records its eval metrics
            eval_started = time.perf_counter()
            final = run_eval(done)
            window.started += time.perf_counter() - eval_started  # not training throughput
        if save:
            guard.check_params(done, params_finite(state["params"]))
            checkpoints.save(done, state, {**meta, "nonfinite_skips": guard.skipped,
                                           "metrics": final if evaluate_now else {}}, log=log)
        if preempted:
            checkpoints.wait()
            log(f"preempted (SIGTERM): saved and committed step {done} in {checkpoints.directory}; "
                "rerun the same command to resume")
            break
    if start >= t.steps:  # nothing left to train: report the saved model
        final = run_eval(start)
    profiler.close()
    checkpoints.wait()
    checkpoints.close()
    preemption.close()
    bar.close()
    writer.close()
    if final and spec is None:
        what = "response-token" if data.train.loss_mask is not None else "next-token"
        log(f"held-out {what} loss {final['loss']:.4f}, perplexity {final['perplexity']:.2f}; "
            f"accuracy {final['accuracy']:.4f} vs most-frequent-token baseline {final['baseline_accuracy']:.4f}")
    elif final:
        ratio = final["accuracy"] / max(final["baseline_accuracy"], 1e-9)
        log(f"held-out MLM accuracy {final['accuracy']:.4f} vs most-frequent-token baseline "
            f"{final['baseline_accuracy']:.4f} ({ratio:.1f}x); loss {final['loss']:.4f}, "
            f"perplexity {final['perplexity']:.2f}")
    return final


def _last_good(checkpoints: Checkpoints) -> str:
    """Lets a pending (finite) save commit, then names the newest committed step."""
    checkpoints.wait()
    latest = checkpoints.latest_step()
    checkpoints.close()
    if latest is None:
        return f"no checkpoint was saved yet in {checkpoints.directory}"
    return f"last good checkpoint: step {latest} in {checkpoints.directory}"


@dataclasses.dataclass
class _Window:
    """Sums of train metrics since the last log line."""

    sums: dict[str, float] = dataclasses.field(default_factory=dict)
    steps: int = 0
    started: float = dataclasses.field(default_factory=time.perf_counter)
    devices: int = 1
    flops_per_token: float = 0.0  # model FLOPs per trained token (train/flops.py)
    peak_flops: float | None = None  # per device; None (unknown chip) omits MFU


def _throughput_window(config: Config, layout: StateLayout, max_predictions: int | None, mesh) -> _Window:
    """A window that also knows what tokens/s per device and MFU need."""
    seq_len = config.data.seq_len
    flops = train_flops_per_token(config.model, non_embedding_params(layout.abstract["params"]), seq_len,
                                  (max_predictions or seq_len) / seq_len)
    peak = peak_flops_per_device(mesh.devices.flat[0].device_kind, config.train.peak_flops_per_device)
    return _Window(devices=mesh.devices.size, flops_per_token=flops, peak_flops=peak)


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
    line["tokens_per_sec_per_device"] = line["tokens_per_sec"] / window.devices
    if window.peak_flops:
        line["mfu"] = mfu(window.flops_per_token, line["tokens_per_sec_per_device"], window.peak_flops)
    line["steps_per_sec"] = n / max(elapsed, 1e-9)
    writer.write(step, "train", line)
    window.sums, window.steps, window.started = {}, 0, time.perf_counter()
