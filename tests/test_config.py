"""Configs: every file loads and validates; bad keys and values fail in one line before device work."""

import json
import os
import pathlib
import subprocess
import sys

import pytest

from train.config import Config, ConfigError, config_from_json, load_config, validate

ROOT = pathlib.Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs").glob("*.py"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_config_loads_and_validates(path):
    config = load_config(str(path))
    assert isinstance(config, Config)
    assert config_from_json(config.to_json()) == config


def test_bert_base_has_the_published_shape():
    m = load_config(str(ROOT / "configs/bert_base.py")).model
    assert (m.num_layers, m.hidden, m.num_heads, m.mlp_dim, m.max_len) == (12, 768, 12, 3072, 512)
    assert 30_000 <= m.vocab_size <= 33_000


def test_overrides_are_typed():
    config = load_config(str(ROOT / "configs/bert_tiny.py"),
                         ["train.steps=7", "optim.learning_rate=3e-4", "data.whole_word_masking=true",
                          "mesh.shape=2,2,2", "optim.schedule=cosine"])
    assert config.train.steps == 7 and config.optim.learning_rate == 3e-4
    assert config.data.whole_word_masking is True and config.mesh.shape == (2, 2, 2)


@pytest.mark.parametrize("override, words", [
    ("train.stepz=5", ["train.stepz", "steps"]),
    ("trian.steps=5", ["trian.steps", "train"]),
    ("train.steps=five", ["train.steps", "five", "integer"]),
    ("train.steps=0", ["train.steps", ">= 1"]),
    ("model.dropout=1.5", ["model.dropout", "1.5"]),
    ("optim.schedule=exp", ["optim.schedule", "exp", "cosine"]),
    ("model.dtype=float16", ["model.dtype", "bfloat16"]),
    ("data.seq_len=4096", ["data.seq_len=4096", "model.max_len"]),
    ("model.num_heads=3", ["model.hidden", "model.num_heads=3"]),
    ("mesh.shape=2,-1,-1", ["mesh.shape", "-1"]),
    ("data.whole_word_masking=maybe", ["maybe", "true or false"]),
    ("train.steps", ["key=value"]),
])
def test_bad_overrides_name_the_key_and_what_is_accepted(override, words):
    with pytest.raises(ConfigError) as info:
        load_config(str(ROOT / "configs/bert_tiny.py"), [override])
    message = str(info.value)
    assert "\n" not in message
    for word in words:
        assert word in message, (word, message)


def test_wrong_type_in_a_config_file(tmp_path):
    path = tmp_path / "bad.py"
    path.write_text("from train.config import Config\n"
                    "def get_config():\n    c = Config()\n    c.train.steps = '10'\n    return c\n")
    with pytest.raises(ConfigError, match=r"train.steps.*'10'.*int"):
        load_config(str(path))


def _run_main(*args, timeout=60):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu"}
    return subprocess.run([sys.executable, "-m", "train.main", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_cli_rejects_unknown_key_in_one_line(tmp_path):
    result = _run_main("--config=configs/bert_tiny.py", f"--workdir={tmp_path / 'w'}", "--config.train.stepz=1")
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0, result.stderr
    assert "unknown config key 'train.stepz'" in result.stderr
    assert not (tmp_path / "w").exists(), "nothing may be written for a bad config"


def test_cli_rejects_unwritable_workdir(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    result = _run_main("--config=configs/bert_tiny.py", f"--workdir={blocker / 'sub'}")
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0, result.stderr
    assert "not a writable directory" in result.stderr and str(blocker / "sub") in result.stderr


def test_cli_rejects_missing_config_file(tmp_path):
    result = _run_main("--config=configs/nope.py", f"--workdir={tmp_path}")
    assert result.returncode == 2 and "configs/nope.py" in result.stderr
    assert result.stderr.strip().count("\n") == 0, result.stderr


def test_older_remat_bools_still_load():
    config = Config()
    config.model.remat = True  # as a config file written before remat policies
    validate(config)
    assert config.model.remat == "full"
    raw = json.loads(Config().to_json())
    raw["model"]["remat"] = False  # as a checkpoint's saved config
    assert config_from_json(json.dumps(raw)).model.remat == "none"
    with pytest.raises(ConfigError, match="model.remat"):
        load_config("configs/bert_tiny.py", ["model.remat=some"])
