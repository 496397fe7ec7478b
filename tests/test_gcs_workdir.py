"""Workdirs in a bucket (gs://), against a local GCS emulator: nothing may leave 127.0.0.1.

In this process the checkpoint manager, the writer lease and the listing run on a tiny
state (keep-K, keep-best, a partial save removed, a damaged step set aside, a live lease
refused). End to end (slow): `python -m train.main` with a gs:// workdir is killed in the
middle of an asynchronous save, rerun, and ends bitwise equal to an uninterrupted run on
local disk; then `train.checkpoints`, `train.evaluate`, `train.interop.export_cli
--out=gs://...` and `train.interop.import_cli --hf_dir=gs://...` run on it; a token store is
written to and read from the bucket. Every client is pointed at the emulator with test credentials
(tests/gcs_emulator.py); Python's sockets are guarded (tests/network_guard.py) and a trap
listener stands in for the metadata server and every proxy, and both must stay untouched.
"""

import dataclasses
import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import uuid

import jax
import numpy as np
import pytest

from tests import gcs_emulator, network_guard
from tests.checkpoint_fixtures import cache_of, checkpoint_config, prepared_seed
from train.config import ConfigError

ROOT = pathlib.Path(__file__).resolve().parents[1]
STEPS = 8


@pytest.fixture(scope="module")
def gcs(tmp_path_factory):
    """The emulator, with this process's storage clients pointed at it and its sockets guarded."""
    folder = tmp_path_factory.mktemp("gcs")
    guard_log = folder / "guard.log"
    with gcs_emulator.running(folder / "emulator") as emulator, pytest.MonkeyPatch.context() as patch:
        for key, value in emulator.env.items():
            patch.setenv(key, value)
        for owner, name, replacement in network_guard.guards(str(guard_log)):
            patch.setattr(owner, name, replacement)
        _fresh_storage_clients(patch)
        emulator.guard_log = guard_log
        yield emulator
        _fresh_storage_clients(patch)
    assert network_guard.log_lines(guard_log) == [], "a client reached beyond 127.0.0.1"
    assert emulator.trapped() == [], "a client went to the metadata server or through a proxy"


def _fresh_storage_clients(patch) -> None:
    """gcsfs reads its endpoint and token when a filesystem is made: forget those made before."""
    import fsspec.config
    import gcsfs
    from etils.epath import backend

    patch.setitem(fsspec.config.conf, "gs", {**fsspec.config.conf.get("gs", {}), "token": "anon"})
    patch.setitem(fsspec.config.conf, "gcs", {**fsspec.config.conf.get("gcs", {}), "token": "anon"})
    gcsfs.GCSFileSystem.clear_instance_cache()
    backend.fsspec_backend._get_filesystem.cache_clear()


def _state(value: float) -> dict:
    return {"step": jax.numpy.int32(value), "params": {"w": jax.numpy.full((4, 8), value, jax.numpy.float32)}}


def test_checkpoints_lease_and_listing_in_a_bucket(gcs, tmp_path):
    from data import remote
    from train.checkpoints.lease import LEASE_FILE, Lease
    from train.checkpoints.listing import format_listing
    from train.checkpoints.manager import Checkpoints

    workdir = f"gs://{gcs_emulator.BUCKET}/unit-{uuid.uuid4().hex[:8]}"
    bucket = remote.as_path(workdir)
    said = []
    checkpoints = Checkpoints(workdir, keep=1, best_metric="loss")
    checkpoints.claim(said.append)
    assert (bucket / LEASE_FILE).exists()
    for step, loss in ((1, 0.5), (2, 0.9), (3, 0.7)):
        checkpoints.save(step, _state(step), {"metrics": {"loss": loss}})
    checkpoints.close()
    assert not (bucket / LEASE_FILE).exists()
    assert Checkpoints(workdir).all_steps() == [1, 3]  # the last (keep=1) and the best loss

    # A save killed before its commit leaves a step folder without commit_success.txt.
    (bucket / "checkpoints" / "4" / "state" / "part").write_text("half")
    # A damaged newest step: its commit marker is junk.
    (bucket / "checkpoints" / "3" / "_CHECKPOINT_METADATA").write_text("{not json")
    assert "unfinished saves (ignored on restore): 4" in format_listing(workdir)
    checkpoints = Checkpoints(workdir, keep=1)
    checkpoints.claim(said.append)
    assert said[-1].startswith("removed 1 partial save(s)") and not (bucket / "checkpoints" / "4").exists()
    state, meta, step = checkpoints.restore_latest(jax.tree.map(_abstract, _state(0)), lambda s, m: None,
                                                   said.append)
    checkpoints.close()
    assert step == 1 and meta["metrics"] == {"loss": 0.5}
    np.testing.assert_array_equal(np.asarray(state["params"]["w"]), np.full((4, 8), 1.0))
    assert "is damaged" in said[-1] and "damaged_checkpoints/3-" in said[-1]
    listing = format_listing(workdir)
    assert "checkpoints in gs://" in listing and "damaged, set aside in damaged_checkpoints/: 3-" in listing

    # A lease held by a live process of this host refuses a second writer; once it dies, it is free.
    holder = subprocess.Popen(["sleep", "60"])
    try:
        from train.checkpoints import lease

        record = {"token": "t", "host": socket.gethostname(), "boot_id": lease._boot_id(), "pid": holder.pid,
                  "process_start": lease._process_start(holder.pid), "processes": 1, "started": "now"}
        (bucket / LEASE_FILE).write_text(json.dumps(record))
        with pytest.raises(ConfigError, match="is being written by another training job"):
            Lease(bucket).acquire(said.append)
    finally:
        holder.kill()
        holder.wait()
    taken = Lease(bucket)
    taken.acquire(said.append)
    taken.release()
    assert not (bucket / LEASE_FILE).exists()


def _abstract(x):
    return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=jax.sharding.SingleDeviceSharding(jax.devices()[0]))


@pytest.mark.slow
def test_train_kill_resume_evaluate_export_with_a_gs_workdir(gcs, tmp_path_factory, tmp_path):
    from data import remote
    from tests.test_kill_resume import Run, _final_state

    seed = prepared_seed(tmp_path_factory)
    config_file = tmp_path / "tiny.py"
    config_file.write_text(
        "import pathlib\nfrom tests.checkpoint_fixtures import checkpoint_config\n"
        f"def get_config():\n    return checkpoint_config(pathlib.Path({str(cache_of(seed))!r}), steps={STEPS})\n")
    straight = tmp_path / "straight"  # the reference: one uninterrupted run on local disk
    straight.mkdir()
    (straight / "tokenizer.model").write_bytes((seed / "tokenizer.model").read_bytes())
    run = Run(config_file, straight)
    assert run.finish() == 0, run.output

    workdir = f"gs://{gcs_emulator.BUCKET}/run-{uuid.uuid4().hex[:8]}"
    bucket = remote.as_path(workdir)
    for name in ("tokenizer.model", "tokenizer.model.sha256"):  # the seed's tokenizer, as a user would upload it
        remote.upload(seed / name, bucket / name)
    env = {**gcs.env, "PYTHONPATH": f"{network_guard.sitecustomize_dir(tmp_path / 'site', gcs.guard_log)}:{ROOT}"}

    # Killed in the middle of the asynchronous save of step 4 (held just before its commit).
    run = Run(config_file, workdir, MESHLM_TEST_HOLD_COMMIT="4:120", **env)
    step_4 = bucket / "checkpoints" / "4"
    run.signal_when(lambda: (step_4 / "_CHECKPOINT_METADATA").exists(), signal.SIGKILL)
    assert run.finish() == -signal.SIGKILL
    assert not (step_4 / "commit_success.txt").exists()

    run = Run(config_file, workdir, **env)
    assert run.finish() == 0, run.output
    assert "removed 1 partial save(s)" in run.output and "resumed from checkpoint step 2" in run.output
    config = checkpoint_config(cache_of(seed), steps=STEPS)
    for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(_final_state(config, straight, STEPS)),
                            jax.tree.leaves(_final_state(config, workdir, STEPS))):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=jax.tree_util.keystr(path))
    lines = [json.loads(line) for line in (bucket / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines if r["split"] == "train"] == list(range(1, STEPS + 1))
    assert any(p.name.startswith("events.out.tfevents") for p in (bucket / "tensorboard").iterdir())

    def command(module: str, *flags: str, at: str = workdir) -> str:
        done = subprocess.run([sys.executable, "-m", module, f"--workdir={at}", *flags], cwd=ROOT,
                              env={**os.environ, **env}, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    listing = command("train.checkpoints")
    assert f"checkpoints in {workdir}/checkpoints" in listing and "NOT COMMITTED" not in listing
    assert [int(line.split()[0]) for line in listing.splitlines()[2:]] == [2, 4, 6, 8]
    command("train.evaluate", "--step=8")
    assert json.loads((bucket / "eval" / "step_8.json").read_text())["step"] == 8
    command("train.interop.export_cli", f"--out={workdir}/hf")
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in (bucket / "hf").iterdir()}
    # ... and back: import_hf reads the bucket's folder into a new gs:// workdir.
    said = command("train.interop.import_cli", f"--hf_dir={workdir}/hf", at=f"{workdir}-imported")
    assert f"into {workdir}-imported as checkpoint step 0" in said
    assert "0  " in command("train.checkpoints", at=f"{workdir}-imported").splitlines()[2]


def test_a_store_written_to_and_read_from_a_bucket(gcs, tmp_path):
    """prepare_cli's --out=gs://... and a store:gs://... source packed for a gs:// workdir."""
    from data import remote
    from data.pipeline import prepare, tokenize_to_store

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n\n".join(f"document {i}: the quick brown fox jumps over the lazy dog {i % 7}"
                                  for i in range(300)))
    store, workdir = (f"gs://{gcs_emulator.BUCKET}/{name}-{uuid.uuid4().hex[:8]}" for name in ("store", "work"))
    manifest = tokenize_to_store(f"files:{corpus}", tmp_path / "tok.model", store, vocab_size=60,
                                 tokenizer_type="bpe", workers=1, builtin_dir=tmp_path / "cache")
    assert json.loads((remote.as_path(store) / "manifest.json").read_text())["content_hash"] == manifest["content_hash"]
    with pytest.raises(Exception, match="already exists"):
        tokenize_to_store(f"files:{corpus}", tmp_path / "tok.model", store, builtin_dir=tmp_path / "cache")
    data = prepare(workdir, f"store:{store}", seq_len=16, vocab_size=60, cache_dir=tmp_path / "cache")
    assert data.train.num_rows > 0 and str(tmp_path / "cache") in str(data.source.directory)
    bucket = remote.as_path(workdir)  # the workdir got the store's tokenizer; the rows stay local
    assert (bucket / "tokenizer.model").read_bytes() == (tmp_path / "tok.model").read_bytes()
    assert not (bucket / "data").exists()
    again = prepare(workdir, f"store:{store}", seq_len=16, vocab_size=60, cache_dir=tmp_path / "cache")
    assert again.key == data.key


def test_a_missing_bucket_is_one_line(gcs):
    from train import program

    with pytest.raises(ConfigError, match="bucket no-such-bucket-xyz not found .*gcloud storage buckets create"):
        program.writable_workdir("gs://no-such-bucket-xyz/run")
    assert str(program.writable_workdir(f"gs://{gcs_emulator.BUCKET}/fine/")) == f"gs://{gcs_emulator.BUCKET}/fine"


def test_the_curve_reads_a_buckets_metrics(gcs):
    """train.evaluate.curve_cli's records come from a gs:// workdir's metrics.jsonl, as MetricWriter leaves it."""
    from train.metrics import MetricWriter, read_metrics, text_curve

    workdir = f"gs://{gcs_emulator.BUCKET}/curve-{uuid.uuid4().hex[:8]}"
    writer = MetricWriter(workdir, echo=lambda line: None)
    for step, loss in ((1, 3.0), (2, 2.0)):
        writer.write(step, "eval", {"loss": loss})
    writer.close()
    assert [r["loss"] for r in read_metrics(workdir)] == [3.0, 2.0]
    assert text_curve(read_metrics(workdir)).splitlines()[-1].startswith("  step 2    2.0000")


def test_a_label_map_in_a_bucket(gcs):
    """A classifier's gs:// workdir keeps labels.json in the bucket (finetune writes, predict reads)."""
    from data.tasks import LabelMap

    path = f"gs://{gcs_emulator.BUCKET}/labels-{uuid.uuid4().hex[:8]}/labels.json"
    with pytest.raises(ValueError, match="no label map at"):
        LabelMap.load(path)
    LabelMap(("negative", "positive")).save(path)
    assert LabelMap.load(path).names == ("negative", "positive")


@pytest.mark.slow
def test_lora_fine_tuning_from_and_into_a_bucket(gcs, tmp_path_factory, tmp_path):
    """SFT with --init_from=gs://... and a gs:// workdir: tokenizer, chat template, checkpoints and a
    resume all in the bucket; the PEFT export staged and uploaded."""
    from data import remote
    from data.chat_template import DEFAULT_TEMPLATE, TEMPLATE_FILE
    from tests.data_fixtures import small_store_tokenizer
    from tests.export_fixtures import random_params, tiny_export_config, write_checkpoint
    from tests.sft_fixtures import reverse_records, sft_config, write_jsonl
    from train.checkpoints.manager import Checkpoints
    from train.checkpoints.params import CheckpointParams
    from train.finetune.supervised import fine_tune
    from train.interop.peft_export import export_peft

    tokenizer = small_store_tokenizer(tmp_path_factory)
    config = tiny_export_config(tokenizer.vocab_size, arch="llama", num_kv_heads=2, max_len=64)
    local = write_checkpoint(tmp_path / "pretrained", config, random_params(config.model, seed=1), tokenizer,
                             mesh_shape=(1, 1, 1))
    root = f"gs://{gcs_emulator.BUCKET}/sft-{uuid.uuid4().hex[:8]}"
    remote.upload_tree(local, remote.as_path(f"{root}/pretrained"))
    data = write_jsonl(tmp_path / "train.jsonl", reverse_records(100, seed=0))
    tuned = sft_config(config, data, steps=2, lora_rank=4)
    tuned.train = dataclasses.replace(tuned.train, batch_size=8, checkpoint_every=2, eval_every=0)
    workdir = remote.as_path(f"{root}/tuned")
    fine_tune(tuned, workdir, f"{root}/pretrained")
    assert Checkpoints(workdir).all_steps() == [2]
    assert (workdir / "tokenizer.model").read_bytes() == tokenizer.path.read_bytes()
    assert (workdir / TEMPLATE_FILE).read_text() == DEFAULT_TEMPLATE
    assert CheckpointParams(workdir).meta["init_from"] == f"{root}/pretrained"
    # A rerun with more steps resumes from the bucket's checkpoint (no --init_from needed).
    tuned.train = dataclasses.replace(tuned.train, steps=4, checkpoint_every=2)
    fine_tune(tuned, workdir, None)
    assert Checkpoints(workdir).all_steps()[-1] == 4
    with remote.staged_folder(f"{root}/peft") as out:
        export_peft(CheckpointParams(workdir), out)
    assert {"adapter_config.json", "adapter_model.safetensors"} <= {p.name for p in remote.as_path(f"{root}/peft").iterdir()}
