"""Supervised fine-tuning (train/finetune/supervised.py) through the pretraining loop: from a decoder workdir
written on another mesh, full or LoRA, with the loop's metrics, checkpoints and exact resume; decoding
through the workdir's chat template; and one-line errors for what a user gets wrong."""

import dataclasses
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest

from data.chat_template import DEFAULT_TEMPLATE, TEMPLATE_FILE
from data.tokenizer import Tokenizer
from train.checkpoints.params import CheckpointParams
from train.config import ConfigError, LoraConfig, MeshConfig, load_config
from train.finetune.supervised import PretrainedDecoder, fine_tune
from train.mesh import make_mesh
from train.optimizer import make_optimizer
from train.state import init_state, state_layout
from train.trainable import split_trainable

from tests.data_fixtures import small_store_tokenizer
from tests.export_fixtures import random_params, tiny_export_config, write_checkpoint
from tests.sft_fixtures import reverse_records, sft_config, write_jsonl

STEPS = 4
ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A decoder workdir with random weights saved on a 2x2x2 mesh, and a file of instruction records."""
    tokenizer = small_store_tokenizer(tmp_path_factory)
    config = tiny_export_config(tokenizer.vocab_size, arch="llama", num_kv_heads=2, init_std=0.1, max_len=64)
    root = tmp_path_factory.mktemp("sft")
    pretrained = write_checkpoint(root / "pretrained", config, random_params(config.model, seed=1), tokenizer,
                                  mesh_shape=(2, 2, 2))
    data = write_jsonl(root / "data" / "train.jsonl", reverse_records(300, seed=0))
    return pretrained, config, data


def _config(setup, lora_rank=0, mesh=(1, 1, 1), **train):
    pretrained, config, data = setup
    tuned = sft_config(config, data, steps=STEPS, lora_rank=lora_rank, learning_rate=1e-2)
    tuned.train = dataclasses.replace(tuned.train, batch_size=8, checkpoint_every=2, log_every=1, eval_every=2,
                                      keep_checkpoints=5, **train)
    tuned.mesh = MeshConfig(shape=mesh)
    return tuned


def test_pretrained_weights_restore_onto_another_mesh_with_fresh_adapters(setup):
    pretrained, config, _ = setup
    tuned = _config(setup, lora_rank=4)
    mesh = make_mesh((1, 4, 2))
    tx, _ = make_optimizer(tuned.optim, STEPS)
    layout = state_layout(tuned.model, tx, mesh)
    fresh = init_state(tuned.model, tx, layout, mesh, seed=0)["params"]
    params = PretrainedDecoder(str(pretrained)).start_params(fresh, mesh)
    saved = CheckpointParams(pretrained)
    adapters, base = split_trainable(params)
    for path, leaf in jax.tree_util.tree_leaves_with_path(base):
        name = ".".join(str(k.key) for k in path)
        np.testing.assert_array_equal(np.asarray(leaf), saved.read(name), err_msg=name)  # bit for bit, 8 -> 8 ways
    for leaf, want in zip(jax.tree.leaves(params), jax.tree.leaves(layout.shardings["params"])):
        assert leaf.sharding.is_equivalent_to(want, leaf.ndim)  # on this run's mesh
    assert not np.asarray(adapters["layers"]["mlp"]["up"]["lora"]["b"]).any()  # B starts at zero


def test_full_and_lora_fine_tuning_run_through_the_loop(setup, tmp_path, capsys):
    pretrained, _, _ = setup
    full = fine_tune(_config(setup, mesh=(2, 2, 2)), tmp_path / "full", str(pretrained))
    out = capsys.readouterr().out
    assert "every weight trains" in out and "sft data: files:" in out and "held-out response-token loss" in out
    assert np.isfinite(full["loss"])
    for name in ("tokenizer.model", TEMPLATE_FILE, "config.json", "metrics.jsonl"):
        assert (tmp_path / "full" / name).is_file(), name
    assert any((tmp_path / "full" / "tensorboard").iterdir())
    lines = [json.loads(line) for line in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["split"]) for r in lines if r["split"] == "eval"] == [(2, "eval"), (4, "eval")]
    meta = CheckpointParams(tmp_path / "full").meta
    assert meta["init_from"] == str(pretrained.absolute()) and meta["config"]["data"]["format"] == "sft"

    template = tmp_path / "qa.jinja"  # a template of the user's own: kept in the workdir, the config pointing there
    template.write_text(DEFAULT_TEMPLATE.replace("'User: '", "'Q: '").replace("'Assistant:", "'A:"))
    lora = _config(setup, lora_rank=4)
    lora.data = dataclasses.replace(lora.data, chat_template=str(template))
    fine_tune(lora, tmp_path / "lora", str(pretrained))
    assert "LoRA rank 4, alpha 8 on q,k,v,o,gate,up,down; the base frozen" in capsys.readouterr().out
    assert (tmp_path / "lora" / TEMPLATE_FILE).read_text() == template.read_text()
    assert CheckpointParams(tmp_path / "lora").meta["config"]["data"]["chat_template"] == ""
    tuned, before = CheckpointParams(tmp_path / "lora"), CheckpointParams(pretrained)
    for name in before.specs:  # the base is the pretrained one, bit for bit
        np.testing.assert_array_equal(tuned.read(name), before.read(name), err_msg=name)
    assert np.abs(tuned.read("layers.attention.value.lora.b")).max() > 0


@pytest.mark.slow
def test_a_resumed_fine_tune_equals_an_uninterrupted_one(setup, tmp_path):
    pretrained, _, _ = setup
    config = _config(setup, lora_rank=4)
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    fine_tune(config, straight, str(pretrained))
    resumed.mkdir()  # as after a crash at step 3: the step-2 checkpoint, the workdir's files
    for name in ("tokenizer.model", TEMPLATE_FILE):
        shutil.copy(straight / name, resumed)
    shutil.copytree(straight / "data", resumed / "data")
    shutil.copytree(straight / "checkpoints" / "2", resumed / "checkpoints" / "2")
    fine_tune(config, resumed, str(pretrained))
    a, b = CheckpointParams(straight, STEPS), CheckpointParams(resumed, STEPS)
    for name in a.specs:
        np.testing.assert_array_equal(a.read(name), b.read(name), err_msg=name)


def test_mistakes_get_one_line_errors(setup, tmp_path):
    pretrained, config, _ = setup
    cases = [
        (lambda: fine_tune(_config(setup), tmp_path / "a", None), r"--init_from is required to start fine-tuning"),
        (lambda: fine_tune(_config(setup), tmp_path / "b", str(tmp_path)), r"--init_from=.* has no checkpoints/"),
    ]
    bert = tiny_export_config(config.model.vocab_size)
    tokenizer = Tokenizer(pretrained / "tokenizer.model")
    write_checkpoint(tmp_path / "bert", bert, random_params(bert.model), tokenizer, mesh_shape=(1, 1, 1))
    cases.append((lambda: fine_tune(_config(setup), tmp_path / "c", str(tmp_path / "bert")),
                  r"holds a bert model; supervised fine-tuning needs a decoder \(model.arch=llama\)"))
    builtin = _config(setup)
    builtin.data = dataclasses.replace(builtin.data, source="builtin")
    cases.append((lambda: fine_tune(builtin, tmp_path / "d", str(pretrained)),
                  r"data.format=sft with data.source=builtin .* accepted: files:<glob of .jsonl> or tfds:"))
    lora = _config(setup, lora_rank=4)
    lora.model = dataclasses.replace(lora.model, lora=LoraConfig(rank=4, targets=("q", "qkv")))
    cases.append((lambda: fine_tune(lora, tmp_path / "e", str(pretrained)),
                  r"config key 'model.lora.targets' got q,qkv; accepted: distinct names among q,k,v,o,gate,up,down"))
    for run, words in cases:
        with pytest.raises(ConfigError, match=words) as error:
            run()
        assert "\n" not in str(error.value)


def _cli(module: str, *args: str, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", module, *args], cwd=ROOT, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


@pytest.mark.slow
def test_the_sft_command_saves_on_sigterm_resumes_exactly_and_decodes_through_the_template(setup, tmp_path):
    """As a user runs it: ./launch.sh sft with configs/sft_tiny.py, stopped by SIGTERM, rerun, then decode --chat."""
    pretrained, _, data = setup
    flags = [f"--init_from={pretrained}", f"--config.data.source=files:{data}", "--config.data.seq_len=64",
             "--config.train.steps=4", "--config.train.batch_size=8", "--config.train.checkpoint_every=2",
             "--config.train.eval_every=2", "--config.train.log_every=1", "--config.train.progress_bar=false",
             "--config.model.lora.rank=4", "--config.optim.learning_rate=1e-2"]
    config = load_config("configs/sft_tiny.py", [f[len("--config."):] for f in flags if f.startswith("--config.")])
    fine_tune(config, tmp_path / "straight", str(pretrained))

    workdir = tmp_path / "stopped"
    run = _cli("train.finetune.sft_cli", "--config=configs/sft_tiny.py", f"--workdir={workdir}", *flags)
    lines = []
    for line in run.stdout:  # SIGTERM as soon as the model is built: handled after the first step
        lines.append(line)
        if line.startswith("model:"):
            run.send_signal(signal.SIGTERM)
    assert run.wait(300) == 0, "".join(lines)
    out = "".join(lines)
    assert "sizes from the model, not the config" in out  # sft_tiny's are gpt_tiny's; the workdir's differ
    assert f"preempted (SIGTERM): saved and committed step 1 in {workdir / 'checkpoints'}" in out
    rerun = _cli("train.finetune.sft_cli", "--config=configs/sft_tiny.py", f"--workdir={workdir}", *flags)
    out = rerun.communicate(timeout=300)[0]
    assert rerun.returncode == 0 and "resumed from checkpoint step 1" in out, out
    a, b = CheckpointParams(tmp_path / "straight", STEPS), CheckpointParams(workdir, STEPS)
    for name in a.specs:
        np.testing.assert_array_equal(a.read(name), b.read(name), err_msg=name)

    decode = _cli("train.generate.decode_cli", f"--workdir={workdir}", "--chat", "--prompt=reverse: river stone",
                  "--max_new_tokens=6")
    out = decode.communicate(timeout=300)[0]
    assert decode.returncode == 0 and "> reverse: river stone\n" in out and "tokens for 1 prompts" in out, out
