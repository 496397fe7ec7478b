"""Commands that read a workdir, tried as a new user would: one line for each mistake or damage.

- evaluate, export, decode and fill_mask on a workdir whose latest checkpoint's files are
  truncated name that step, say it is damaged and use the previous one (as training does,
  but leaving the step in place); a damaged --step is a one-line error;
- fill_mask on a decoder refuses; fine-tuning a classifier from a decoder names the architecture.
"""

import dataclasses
import sys

import pytest
from absl import flags

from train import program
from train.evaluate import __main__ as evaluate_main
from train.finetune import __main__ as finetune_main
from train.generate import decode_cli, fill_mask_cli
from train.interop import export_cli

from tests.data_fixtures import SMALL_CORPUS_BYTES, shared_dir, small_tokenizer
from tests.export_fixtures import random_params, tiny_export_config, write_checkpoint


def _run(capsys, monkeypatch, main, *args) -> tuple[int, str, str]:
    """A command's main in this process: (exit status, stdout, stderr)."""
    monkeypatch.setattr(sys, "argv", ["meshlm", *args])
    flags.FLAGS.unparse_flags()  # absl keeps a flag's last value when a later argv omits it
    with pytest.raises(SystemExit) as info:
        program.run(main)
    captured = capsys.readouterr()
    return info.value.code or 0, captured.out, captured.err


def _workdir(tmp_path_factory, name: str, arch: str):
    """A workdir with checkpoints at steps 2 and 4 (random weights) over the session's small corpus."""
    tokenizer = small_tokenizer(tmp_path_factory)
    config = tiny_export_config(tokenizer.vocab_size, arch=arch, init_std=0.1)
    config.data = dataclasses.replace(config.data, max_corpus_bytes=SMALL_CORPUS_BYTES,
                                      cache_dir=str(shared_dir(tmp_path_factory) / "corpus"))
    config.train = dataclasses.replace(config.train, eval_batches=1)
    workdir = tmp_path_factory.mktemp(name) / "work"
    for step, seed in ((2, 0), (4, 1)):
        write_checkpoint(workdir, config, random_params(config.model, seed), tokenizer, mesh_shape=(1, 1, 1), step=step)
    return workdir


def _truncate(workdir, pattern: str = "*") -> None:
    """Cuts every file of step 4 matching pattern to half its size, as an interrupted copy would."""
    for path in (workdir / "checkpoints" / "4").rglob(pattern):
        if path.is_file():
            path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _falls_back(code: int, out: str, err: str) -> None:
    """Exit 0, and stderr holds one line: the warning naming step 4 as damaged."""
    assert code == 0, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("warning: checkpoint step 4") and "damaged" in lines[0], err
    assert lines[0].endswith("using the previous checkpoint"), err


@pytest.fixture(scope="module")
def encoder(tmp_path_factory):
    workdir = _workdir(tmp_path_factory, "encoder", "bert")
    _truncate(workdir)  # every file: the commit marker and metadata are cut JSON
    return workdir


@pytest.fixture(scope="module")
def decoder(tmp_path_factory):
    workdir = _workdir(tmp_path_factory, "decoder", "llama")
    _truncate(workdir, "d/*")  # only the array files: the metadata reads, the weights do not
    return workdir


def test_evaluate_export_and_fill_mask_use_the_previous_checkpoint(encoder, tmp_path, capsys, monkeypatch):
    code, out, err = _run(capsys, monkeypatch, evaluate_main.main, f"--workdir={encoder}")
    _falls_back(code, out, err)
    assert "step 2:" in out and (encoder / "eval" / "step_2.json").is_file()
    code, out, err = _run(capsys, monkeypatch, evaluate_main.main, f"--workdir={encoder}", "--all")
    assert code == 0 and err.startswith("warning: checkpoint step 4") and err.strip().endswith("skipped"), err
    assert "step 2:" in out and not (encoder / "eval" / "step_4.json").exists()

    code, out, err = _run(capsys, monkeypatch, export_cli.main, f"--workdir={encoder}", f"--out={tmp_path / 'hf'}")
    _falls_back(code, out, err)
    assert "exported checkpoint step 2" in out

    code, out, err = _run(capsys, monkeypatch, fill_mask_cli.main, f"--workdir={encoder}", "--text=The [MASK] is.")
    _falls_back(code, out, err)
    assert "checkpoint step 2" in out
    assert (encoder / "checkpoints" / "4").is_dir(), "a reader leaves the damaged step where it is"

    code, out, err = _run(capsys, monkeypatch, export_cli.main, f"--workdir={encoder}", "--step=4",
                          f"--out={tmp_path / 'hf4'}")
    assert code == 2 and err.startswith("error: checkpoint step 4") and "damaged" in err
    assert err.strip().count("\n") == 0, err


def test_damaged_weights_are_found_when_read(decoder, tmp_path, capsys, monkeypatch):
    code, out, err = _run(capsys, monkeypatch, decode_cli.main, f"--workdir={decoder}", "--prompt=Return the",
                          "--max_new_tokens=4")
    _falls_back(code, out, err)
    code, out, err = _run(capsys, monkeypatch, export_cli.main, f"--workdir={decoder}", f"--out={tmp_path / 'hf'}")
    _falls_back(code, out, err)
    assert "exported checkpoint step 2" in out


def test_fill_mask_on_a_decoder_refuses_in_one_line(decoder, capsys, monkeypatch):
    code, out, err = _run(capsys, monkeypatch, fill_mask_cli.main, f"--workdir={decoder}", "--text=The [MASK] is.")
    assert code == 2 and err.startswith("error: the workdir holds a llama model; fill-mask needs an encoder")
    assert err.strip().count("\n") == 0 and "[MASK]" not in out, (out, err)


def test_finetuning_from_a_decoder_names_the_architecture(decoder, tmp_path, capsys, monkeypatch):
    code, out, err = _run(capsys, monkeypatch, finetune_main.main, "--config=configs/finetune_cls.py",
                          f"--init_from={decoder}", f"--workdir={tmp_path / 'cls'}", "--config.model.vocab_size=800",
                          "--config.task.train_path=t.csv", "--config.task.validation_path=v.csv",
                          "--config.mesh.shape=1,1,1")
    assert code == 2 and "the architecture differs (model.arch llama vs bert)" in err, err
    assert err.strip().count("\n") == 0 and "KeyError" not in err and "mlp_dim" not in err, err
