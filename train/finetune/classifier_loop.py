"""The fine-tuning loop: a classifier from a pretrained MLM workdir, evaluated and checkpointed every epoch.

The encoder's weights come from the latest checkpoint of --init_from, restored onto this
run's mesh (whatever mesh wrote them); the pooler and classifier start fresh. A workdir
that already has checkpoints resumes from the latest instead. Without --init_from the
whole model starts from random weights (the baseline a pretrained start should beat).
"""

from __future__ import annotations

import json
import pathlib
import time
from typing import Any, Callable

import jax
import numpy as np
from jax.sharding import Mesh

from data.tokenizer import SPM_FILE, copy_tokenizer, open_tokenizer, tokenizer_file
from train import peers
from train.checkpoints.manager import Checkpoints
from train.config import Config, ConfigError, config_from_json
from train.finetune.task_data import TaskData, check_task, eval_batches, load_task, steps_per_epoch, train_batch
from train.finetune.classifier_steps import classifier_factory, compile_steps, finetune_optimizer
from train.mesh import check_divisibility, make_mesh, process_rows, to_global
from train.metrics import MetricWriter
from train.optimizer import make_optimizer
from train.state import StateLayout, TrainState, init_state, state_layout

# Model fields that decide parameter shapes and dtypes: the pretrained model must agree.
SHAPE_FIELDS = ("vocab_size", "max_len", "hidden", "num_layers", "num_heads", "head_dim",
                "mlp_dim", "param_dtype")
ENCODER_PARAMS = ("embeddings", "layers")

def finetune(config: Config, workdir: pathlib.Path, init_from: str | None) -> dict[str, float]:
    """Trains (or resumes) the classifier for task.epochs epochs; returns the last validation metrics."""
    check_task(config.task)
    primary = jax.process_index() == 0
    t = config.train
    mesh = make_mesh(config.mesh.shape)
    check_divisibility(mesh, batch_size=t.batch_size, num_heads=config.model.num_heads)
    log = print if primary else (lambda line: None)
    checkpoints = Checkpoints(workdir, keep=t.keep_checkpoints)
    checkpoints.claim(log)  # before any save: removes partial saves of runs that died
    peers.watch_workdir(workdir, checkpoints.release)
    resume_step = checkpoints.latest_step()
    pretrained = None if resume_step is not None or not init_from else PretrainedEncoder(init_from, config)
    tokenizer = open_tokenizer(_tokenizer_for(workdir, init_from, resume_step is not None))
    task = load_task(config, tokenizer, workdir)
    per_epoch = steps_per_epoch(task.train, t.batch_size)
    total = per_epoch * config.task.epochs
    log(f"task: {task.train.num_rows} train, {task.validation.num_rows} validation examples; "
        f"labels {list(task.label_map.names)}; {config.task.epochs} epochs of {per_epoch} steps")
    factory = classifier_factory(config.model, len(task.label_map.names), config.task)
    tx, schedule = finetune_optimizer(config.optim, total, config.task.body_learning_rate_ratio)
    layout = state_layout(config.model, tx, mesh, factory)
    log(f"model: {layout.param_count / 1e6:.2f}M parameters; mesh {dict(mesh.shape)} over {mesh.devices.size} devices")

    if resume_step is not None:
        state, start = _resume(checkpoints, resume_step, config, layout, tokenizer), resume_step
        log(f"resumed from checkpoint step {start} in {checkpoints.directory}")
    else:
        state, start = init_state(config.model, tx, layout, mesh, t.seed, factory), 0
        if pretrained is not None:
            state = _with_encoder(state, pretrained.load(mesh), layout)
            log(f"encoder from {pretrained.describe()}; head initialized fresh")
        else:
            log("no --init_from: the whole model starts from random weights")
    if primary:
        (workdir / "config.json").write_text(config.to_json())
    meta = {"config": json.loads(config.to_json()), "labels": list(task.label_map.names),
            "tokenizer_sha256": tokenizer.sha256(), "init_from": pretrained.describe() if pretrained else None}
    train_step, eval_step = compile_steps(layout, mesh, tx=tx, schedule=schedule, seed=t.seed)
    writer = MetricWriter(workdir, enabled=primary, echo=log, resume_step=start)
    window, pending, final = _Window(), None, {}
    for step in range(start, total):
        batch = to_global(process_rows(train_batch(task.train, step, t.batch_size, t.seed)), mesh)
        state, metrics = train_step(state, batch)
        checkpoints.poll()  # a failed background save stops the run now
        if pending is not None:  # one step late: the host waits on step-1 while step runs
            window.add(writer, *pending, t.log_every)
        pending, done = (step + 1, metrics), step + 1
        epoch_end = done % per_epoch == 0
        if epoch_end or done % t.checkpoint_every == 0:
            window.add(writer, *pending, t.log_every, force=epoch_end)
            pending = None
            checkpoints.save(done, state, meta, log=log)
        if epoch_end:
            final = validate(state["params"], eval_step, task, t.batch_size, mesh)
            writer.write(done, "eval", {"epoch": done // per_epoch, **final})
    if start >= total:  # nothing left to train: report the saved model
        final = validate(state["params"], eval_step, task, t.batch_size, mesh)
    checkpoints.wait()
    checkpoints.close()
    writer.close()
    summary = f"validation accuracy {final['accuracy']:.4f} (majority class {final['majority_accuracy']:.4f})"
    log(summary + (f", F1 {final['f1']:.4f}" if "f1" in final else ""))
    return final


def validate(params: Any, eval_step: Callable, task: TaskData, batch_size: int, mesh: Mesh) -> dict[str, float]:
    """Accuracy and loss over the whole validation split; F1 of label id 1 when there are two labels."""
    predictions, losses = [], []
    for batch in eval_batches(task.validation, batch_size):
        weights = batch.pop("weights")
        out = jax.device_get(eval_step(params, to_global(process_rows(batch), mesh)))
        predictions.append(np.argmax(out["logits"], axis=-1)[weights > 0])
        losses.append(out["nll"][weights > 0])
    predicted, labels = np.concatenate(predictions), task.validation.arrays["labels"]
    counts = np.bincount(labels, minlength=len(task.label_map.names))
    metrics = {"accuracy": float(np.mean(predicted == labels)), "loss": float(np.mean(np.concatenate(losses))),
               "majority_accuracy": float(counts.max() / counts.sum())}
    if len(task.label_map.names) == 2:
        true_pos = float(np.sum((predicted == 1) & (labels == 1)))
        metrics["f1"] = 2 * true_pos / max(float(np.sum(predicted == 1) + np.sum(labels == 1)), 1.0)
    return metrics


class PretrainedEncoder:
    """The latest checkpoint of a pretraining workdir, checked against the fine-tuning config."""

    def __init__(self, path: str, config: Config):
        self.workdir = pathlib.Path(path)
        if not (self.workdir / "checkpoints").is_dir():
            raise ConfigError(f"--init_from={path} has no checkpoints/; pass the workdir of a pretraining run")
        self.checkpoints = Checkpoints(self.workdir, use_async=False)
        self.step = self.checkpoints.latest_step()
        if self.step is None:
            raise ConfigError(f"--init_from={path} has no checkpoints yet; pretrain first")
        self.meta = self.checkpoints.restore_meta(self.step)
        if "labels" in self.meta:
            raise ConfigError(f"--init_from={path} is a fine-tuned classifier; pass the workdir of a pretraining run")
        self.config = config_from_json(json.dumps(self.meta["config"]))
        pretrained_arch, arch = self.config.model.arch, config.model.arch
        if pretrained_arch != arch:  # before the sizes: a decoder's differ in ways that say nothing
            raise ConfigError(f"--init_from={path} (step {self.step}) holds a {pretrained_arch} model, but the "
                              f"classifier fine-tunes a {arch} encoder: the architecture differs (model.arch "
                              f"{pretrained_arch} vs {arch}); pass the workdir of a masked-LM (bert) pretraining run")
        diff = {f: (getattr(self.config.model, f), getattr(config.model, f)) for f in SHAPE_FIELDS
                if getattr(self.config.model, f) != getattr(config.model, f)}
        if diff:
            raise ConfigError(f"--init_from={path} (step {self.step}) holds a different model than the config: "
                              f"{diff} (pretrained, config); set the config's model.* to the pretrained values")
        tokenizer = tokenizer_file(self.workdir)
        if tokenizer is None:
            raise ConfigError(f"--init_from={path} has no tokenizer.model or tokenizer.json; pass the workdir of a "
                              "pretraining run")
        if self.meta.get("tokenizer_sha256") not in (None, open_tokenizer(tokenizer).sha256()):
            raise ConfigError(f"--init_from={path}: {tokenizer.name} is not the one step {self.step} was trained with")

    def describe(self) -> str:
        return f"{self.workdir} step {self.step}"

    def load(self, mesh: Mesh) -> dict[str, Any]:
        """The encoder parameters, restored into targets carrying this mesh's shardings."""
        tx, _ = make_optimizer(self.config.optim, self.config.train.steps)
        layout = state_layout(self.config.model, tx, mesh)
        state, _ = self.checkpoints.restore(self.step, layout.abstract)
        self.checkpoints.close()
        return {name: state["params"][name] for name in ENCODER_PARAMS}


def _tokenizer_for(workdir: pathlib.Path, init_from: str | None, resuming: bool) -> pathlib.Path:
    """The workdir's tokenizer file, copied from --init_from on a fresh start so the workdir stands alone."""
    if resuming or not init_from:
        target = tokenizer_file(workdir)
        if target is None:
            raise ConfigError(f"--workdir={workdir} has no tokenizer; pass --init_from=PRETRAINED_WORKDIR "
                              f"(its tokenizer is copied) or put a sentencepiece {SPM_FILE} there")
        return target
    return copy_tokenizer(open_tokenizer(tokenizer_file(init_from)), workdir)


def _resume(checkpoints: Checkpoints, step: int, config: Config, layout: StateLayout, tokenizer) -> TrainState:
    """The latest fine-tuning checkpoint, checked to be of this model, labels and tokenizer."""
    meta = checkpoints.restore_meta(step)
    saved = config_from_json(json.dumps(meta["config"]))
    diff = {f: (getattr(saved.model, f), getattr(config.model, f)) for f in SHAPE_FIELDS
            if getattr(saved.model, f) != getattr(config.model, f)}
    if diff or saved.task.pooling != config.task.pooling:
        raise ConfigError(f"checkpoint step {step} was written by a different model: {diff or 'pooling'} "
                          "(saved, now); use another --workdir or the saved settings")
    if meta.get("tokenizer_sha256") not in (None, tokenizer.sha256()):
        raise ConfigError(f"checkpoint step {step} was trained with another tokenizer than {tokenizer.path.name}; "
                          "restore the original or use a new --workdir")
    state, _ = checkpoints.restore(step, layout.abstract)
    return state


def _with_encoder(state: TrainState, encoder: dict[str, Any], layout: StateLayout) -> TrainState:
    """The state with its embeddings and layers replaced by pretrained ones (same shapes, same shardings)."""
    params = dict(state["params"])
    for name, subtree in encoder.items():
        params[name] = jax.tree.map(lambda x, s: jax.device_put(x, s), subtree, layout.shardings["params"][name])
    return {**state, "params": params}


class _Window:
    """Averages train metrics between log lines."""

    def __init__(self):
        self.sums: dict[str, float] = {}
        self.steps = 0
        self.started = time.perf_counter()

    def add(self, writer: MetricWriter, step: int, metrics: Any, log_every: int, force: bool = False) -> None:
        values = {k: float(v) for k, v in jax.device_get(metrics).items()}
        for key, value in values.items():
            self.sums[key] = self.sums.get(key, 0.0) + value
        self.steps += 1
        if step % log_every and not force:
            return
        line = {k: self.sums[k] / self.steps for k in ("loss", "accuracy", "grad_norm")}
        line["learning_rate"] = values["learning_rate"]
        line["steps_per_sec"] = self.steps / max(time.perf_counter() - self.started, 1e-9)
        writer.write(step, "train", line)
        self.sums, self.steps, self.started = {}, 0, time.perf_counter()
