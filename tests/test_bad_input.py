"""Every mistake a user can make gets one line naming it and what is accepted, exit 2, no traceback.

The CLI runs in-process (`program.run(train_main.main)` with sys.argv set), so each case costs
only its own checks; nothing the user had is written over.
"""

import os
import pathlib
import subprocess
import sys

import pytest
from absl import flags

from train import main as train_main
from data.builtin_corpus import read_documents
from data.sentencepiece_training import train_tokenizer
from train import program
from train.checkpoints.manager import Checkpoints
from train.checkpoints.listing import format_listing
from train.config import ConfigError
from train.loop import train

from tests.checkpoint_fixtures import cache_of, checkpoint_config, prepared_seed, seeded_workdir

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _cli(capsys, monkeypatch, *args) -> tuple[int, str]:
    """Runs `python -m train.main ARGS` in this process: (exit status, stderr)."""
    monkeypatch.setattr(sys, "argv", ["train.main", *args])
    flags.FLAGS.unparse_flags()  # absl keeps a flag's last value when a later argv omits it
    with pytest.raises(SystemExit) as info:
        program.run(train_main.main)
    return info.value.code, capsys.readouterr().err


def _one_line(code: int, err: str, *words: str) -> None:
    assert code == 2, (code, err)
    assert err.startswith("error: ") and err.strip().count("\n") == 0 and "Traceback" not in err, err
    for word in words:
        assert word in err, (word, err)


def _snapshot(directory: pathlib.Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(directory)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in directory.rglob("*") if p.is_file() and "tensorboard" not in p.parts}


def test_config_and_path_mistakes_before_any_device_work(tmp_path, capsys, monkeypatch):
    w = tmp_path / "w"
    tiny = "--config=configs/bert_tiny.py"
    cases = [
        ((tiny, f"--workdir={w}", "--config.train.stepz=1"), ["unknown config key 'train.stepz'", "steps"]),
        ((tiny, f"--workdir={w}", "--config.train.steps=five"), ["train.steps", "five", "integer"]),
        ((tiny, f"--workdir={w}", "--config.train.steps=0"), ["train.steps", ">= 1"]),
        ((tiny, f"--workdir={w}", "--config.train.keep_best_metric=bleu"), ["keep_best_metric", "bleu", "accuracy"]),
        ((tiny, f"--workdir={w}", "--config.train.keep_best_metric=loss", "--config.train.eval_every=0"),
         ["keep_best_metric", "eval_every"]),
        (("--config=configs/nope.py", f"--workdir={w}"), ["configs/nope.py", "not found"]),
        ((tiny,), ["--workdir is required"]),
        ((tiny, "--workdir=s3://bucket/run"), ["s3://bucket/run", "accepted URLs start with gs://"]),
    ]
    for args, words in cases:
        _one_line(*_cli(capsys, monkeypatch, *args), *words)
    assert not w.exists(), "a rejected run must not create its workdir"
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    _one_line(*_cli(capsys, monkeypatch, tiny, f"--workdir={blocker / 'sub'}"), "not a writable directory",
              str(blocker / "sub"))
    assert blocker.read_text() == "not a directory"
    with pytest.raises(ConfigError):  # --debug: the real exception, traceback and all
        _cli(capsys, monkeypatch, tiny, f"--workdir={w}", "--config.train.stepz=1", "--debug")


@pytest.fixture
def trained(tmp_path, tmp_path_factory):
    """(config file, workdir with checkpoints 2 and 4) of a tiny finished run."""
    seed = prepared_seed(tmp_path_factory)
    config_file = tmp_path / "tiny.py"
    config_file.write_text(
        "import pathlib\nfrom tests.checkpoint_fixtures import checkpoint_config\n"
        f"def get_config():\n    return checkpoint_config(pathlib.Path({str(cache_of(seed))!r}), steps=4,"
        " eval_every=2)\n")
    workdir = seeded_workdir(seed, tmp_path / "w")
    train(checkpoint_config(cache_of(seed), steps=4, eval_every=2), workdir)
    return config_file, workdir, seed


@pytest.mark.slow
def test_mistakes_against_a_trained_workdir(trained, tmp_path, capsys, monkeypatch):
    config_file, workdir, seed = trained
    run = (f"--config={config_file}", f"--workdir={workdir}")
    before = _snapshot(workdir)

    _one_line(*_cli(capsys, monkeypatch, *run, "--config.model.hidden=64"),
              "checkpoint step 4 was written by a different model", "hidden")
    _one_line(*_cli(capsys, monkeypatch, *run, "--config.mesh.shape=4,4,4"),
              "mesh.shape=(4, 4, 4) needs 64 devices but this job has 8")
    _one_line(*_cli(capsys, monkeypatch, *run, "--config.train.batch_size=6", "--config.mesh.shape=4,1,1"),
              "train.batch_size=6", "dcn*data*fsdp=4")
    assert _snapshot(workdir) == before, "nothing may be written over"

    tokenizer = workdir / "tokenizer.model"
    original = tokenizer.read_bytes()
    other = train_tokenizer(next(cache_of(seed).glob("builtin-*/train.txt")), tmp_path / "small.model",
                            vocab_size=300, model_type="bpe")
    tokenizer.write_bytes(other.path.read_bytes())  # a tokenizer whose vocabulary does not match
    _one_line(*_cli(capsys, monkeypatch, *run), str(tokenizer), "300", "400")
    tokenizer.write_bytes(b"this is not a sentencepiece model")  # a damaged tokenizer file
    _one_line(*_cli(capsys, monkeypatch, *run), str(tokenizer), "not a sentencepiece model")
    assert tokenizer.read_bytes() == b"this is not a sentencepiece model", "the user's file is kept as is"
    tokenizer.write_bytes(original)
    assert sorted(Checkpoints(workdir, use_async=False).all_steps()) == [2, 4]

    # The listing shows each step with its commit time, size and eval metrics.
    listing = format_listing(workdir)
    rows = [line.split() for line in listing.splitlines()[2:]]
    assert [int(r[0]) for r in rows] == [2, 4], listing
    assert all("eval/loss" in r and "train/loss" in r and r[4] in ("KB", "MB") for r in rows), listing


def test_empty_corpus_is_one_line(tmp_path, capsys, monkeypatch):
    _one_line(*_cli(capsys, monkeypatch, "--config=configs/bert_tiny.py", f"--workdir={tmp_path / 'w'}",
                    "--config.data.max_corpus_bytes=1", f"--config.data.cache_dir={tmp_path / 'cache'}"),
              "corpus came out empty", "max_bytes=1")


def test_non_utf8_text_is_replaced_and_counted(tmp_path, capsys):
    path = tmp_path / "docs.txt"
    path.write_bytes(b"first document\n\nsecond \xff\xfe document\nthird \xc3\xa9t\xc3\xa9\n")
    assert read_documents(path) == ["first document", "second \ufffd\ufffd document", "third \u00e9t\u00e9"]
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "1 of 3 documents had bytes that are not UTF-8" in err and str(path) in err


def test_checkpoint_listing_cli(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "-m", "train.checkpoints", f"--workdir={tmp_path / 'nope'}"],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    _one_line(result.returncode, result.stderr, "does not exist", str(tmp_path / "nope"))
