"""Shown, not claimed: fine-tuning from a pretrained MLM against the same run from random weights.

The task is made at test time from this Python install (data/docstring_task.py): which
standard-library package (asyncio, email, logging) a docstring comes from, with about 25
labelled examples per package and about 175 per package held out. A tiny MLM is
pretrained first (1000 steps, about 14% masked-token accuracy) on a prefix of the
built-in corpus that holds those packages' docstrings, unlabelled. Both fine-tuning runs
get the same short budget (4 epochs of 9 steps) and differ only in the encoder's start.

What this tiny pretraining robustly gives is a lower validation loss after the short
budget (about 0.81-0.83 against 1.01-1.05, over fine-tuning seeds 0 and 1); validation
accuracy is printed too, but at this scale it is not robustly higher (0.60 vs 0.33 with
seed 0, 0.67 vs 0.70 with seed 1), so it is not asserted. Run with `-s` to see the figures.
The accuracy gap is shown on a task built so that only pretraining can close it, in
tests/test_finetune_transfer.py.

Recipes tried for an accuracy gap, none robust over fine-tuning seeds 0, 1, 2 (pretrained
vs random validation accuracy; majority class 0.34 for families, 0.50 for word order):
- this pretraining, 18 labels per package (per_family=120, validation_percent=87), 8
  epochs: 0.61/0.60, 0.71/0.72, 0.69/0.64.
- "original vs words shuffled" on 24-word docstring prefixes of packages outside the
  pretraining prefix (multiprocessing, unittest, urllib, xml), 96 train, 185 validation,
  6 epochs: 0.49/0.51, 0.49/0.50, 0.48/0.50 (this MLM has not learned word order).
- pretraining only on the three packages' docstrings (183 KB, files: source), lr 5e-3,
  1000 steps (12.5% masked accuracy): this task 0.57/0.33, 0.72/0.70, 0.59/0.55; with 18
  labels per package 0.66/0.60, 0.69/0.72, 0.59/0.64. lr 8e-3 collapsed to unigram
  predictions (3.7% masked accuracy) and lost to random weights on every seed.
- this pretraining (rerun: 15.8% held-out masked accuracy), this test's task and recipe
  at 4 epochs: 0.67/0.48, 0.69/0.65, 0.62/0.55; at 8 epochs 0.79/0.78, 0.81/0.80,
  0.76/0.60; at 12 epochs 0.80/0.81, 0.80/0.81, 0.77/0.69.
- near-linear probe, the same recipe with task.body_learning_rate_ratio 0.1 (lr 2e-3, 4
  epochs): 0.34/0.33, 0.37/0.33, 0.33/0.33; ratio 0.1, lr 5e-3, 12 epochs: 0.68/0.72,
  0.70/0.75, 0.68/0.64 (also without dropout: 0.69/0.75, 0.70/0.78, 0.71/0.65); ratio
  0.05, lr 1e-2, 12 epochs: 0.69/0.72, 0.69/0.75, 0.65/0.63.
- few labels, about 10 per package (validation_percent=95), 12 epochs: 0.63/0.65,
  0.57/0.59, 0.63/0.53; the same with ratio 0.2 and lr 5e-3: 0.61/0.56, 0.59/0.54,
  0.62/0.47.
- six packages (asyncio, distutils, email, idlelib, importlib, logging; 114 train, 786
  validation, majority 0.17), 6 epochs: 0.49/0.45, 0.45/0.48, 0.47/0.46.
- validation held out by whole source file (a prototype split outside the repo, so it
  shares fewer names with training), 66 train, 510 validation, 4 epochs: 0.45/0.51, 0.50/0.46, 0.56/0.49; 8 epochs: 0.61/0.61,
  0.66/0.55, 0.68/0.59.
- pretraining with mlm_probability 0.4 (15.2% masked accuracy): its features probe no
  better than random ones (below).
Why: a ridge probe on frozen features (77 train, 523 validation) reads the family equally
well from this MLM's mean-pooled hidden states (0.52-0.58) or mean word embeddings
(0.51-0.59) as from random weights' (0.52-0.59 and 0.53-0.61). Random weights with mean
pooling are a random projection of the bag of words, which is what a topic task needs;
this 1000-step MLM has not yet learned topical features beyond that, so a pretrained start
only converges faster (lower loss) and wins on accuracy when the random run is slow to
start.
"""

import dataclasses
import shutil

import pytest

from data.docstring_task import write_task
from train.config import Config, DataConfig, MeshConfig, ModelConfig, OptimConfig, TrainConfig
from train.finetune.classifier_loop import finetune
from train.loop import train
from train.config import TaskConfig

MODEL = ModelConfig(vocab_size=1000, max_len=64, hidden=64, num_layers=2, num_heads=4, mlp_dim=256,
                    dropout=0.0, attention_dropout=0.0, init_std=0.05)
PRETRAIN_STEPS = 1000
CORPUS_BYTES = 1_500_000  # the stdlib's top-level modules, then asyncio ... logging in walk order
LOSS_MARGIN = 0.1


def _pretrain_config(tmp_path) -> Config:
    return Config(
        name="gap_pretrain", model=MODEL,
        data=DataConfig(seq_len=64, max_corpus_bytes=CORPUS_BYTES, cache_dir=str(tmp_path / "cache"),
                        tokenizer_type="bpe"),
        optim=OptimConfig(learning_rate=5e-3, warmup_steps=30, b2=0.98),
        train=TrainConfig(steps=PRETRAIN_STEPS, batch_size=32, log_every=100, eval_every=0, eval_batches=2,
                          checkpoint_every=PRETRAIN_STEPS, progress_bar=False),
        mesh=MeshConfig(shape=(1, 1, 1)))


def _finetune_config(train_path, validation_path) -> Config:
    """The same recipe for both starts: only the initial encoder weights differ."""
    return Config(
        name="gap_finetune", model=dataclasses.replace(MODEL, dropout=0.1, attention_dropout=0.1),
        data=DataConfig(seq_len=64),
        optim=OptimConfig(learning_rate=2e-3, warmup_steps=10),
        train=TrainConfig(batch_size=8, log_every=100, checkpoint_every=1000, progress_bar=False),
        mesh=MeshConfig(shape=(1, 1, 1)),
        task=TaskConfig(train_path=str(train_path), validation_path=str(validation_path), epochs=4,
                        pooling="mean"))


@pytest.mark.slow
def test_pretrained_start_reaches_a_lower_validation_loss_on_a_short_budget(tmp_path):
    train(_pretrain_config(tmp_path), tmp_path / "pretrained")
    train_path, validation_path = write_task(tmp_path / "task", ("asyncio", "email", "logging"),
                                             per_family=200, validation_percent=88)
    config = _finetune_config(train_path, validation_path)
    pretrained = finetune(config, tmp_path / "from_pretrained", str(tmp_path / "pretrained"))
    (tmp_path / "from_scratch").mkdir()
    shutil.copy(tmp_path / "pretrained" / "tokenizer.model", tmp_path / "from_scratch")
    scratch = finetune(config, tmp_path / "from_scratch", None)
    print(f"\nvalidation after 4 epochs: from the pretrained MLM accuracy {pretrained['accuracy']:.3f} "
          f"loss {pretrained['loss']:.3f}; from random weights accuracy {scratch['accuracy']:.3f} "
          f"loss {scratch['loss']:.3f} (majority class {scratch['majority_accuracy']:.3f})")
    assert pretrained["loss"] <= scratch["loss"] - LOSS_MARGIN
