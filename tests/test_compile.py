"""Pre-flight: --dry_run compiles for a mesh larger than the host's devices and reports memory."""

import os
import pathlib
import re
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
TINY = ["--config=configs/bert_tiny.py", "--config.model.hidden=64", "--config.model.mlp_dim=128",
        "--config.data.seq_len=32", "--config.train.batch_size=16"]


def _dry_run(*args):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("XLA_FLAGS", None)  # one CPU device here: the dry run must simulate the mesh's 16
    return subprocess.run([sys.executable, "-m", "train.main", *TINY, *args, "--dry_run"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)


def _mib(out: str, key: str) -> float:
    return float(re.search(rf"^  {key} +([0-9.]+) MiB", out, re.M).group(1))


def test_dry_run_reports_per_device_memory_of_a_16_device_mesh():
    result = _dry_run("--config.mesh.shape=1,16,1")
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    assert "(16 simulated devices)" in out
    params, opt = _mib(out, "parameters"), _mib(out, "optimizer state")
    # bert_tiny with 64 hidden: ~0.3M float32 parameters, FSDP over 16 -> ~1/16 each.
    assert 0.0 < params < 1.4 / 16 * 1.5 and abs(opt - 2 * params) < 0.02
    assert abs(_mib(out, "arguments") - (params + opt + _mib(out, "batch"))) < 0.02  # XLA agrees
    assert _mib(out, "temporaries") > 0 and _mib(out, "peak estimate") >= _mib(out, "arguments")


def test_dry_run_needs_every_mesh_size():
    result = _dry_run("--config.mesh.shape=1,-1,1")
    assert result.returncode == 2 and "--dry_run needs every mesh size" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_sharded_train_step_compiles_without_full_rematerialization(capfd):
    # XLA's SPMD partitioner warns "Involuntary full rematerialization" when a sharding it
    # cannot convert (e.g. the embedding gather re-split onto the batch) forces a full copy.
    import jax

    from tests.train_fixtures import tiny_config
    from train.preflight import memory_report

    config = tiny_config()
    config.mesh.shape = (2, 2, 2)
    jax.config.update("jax_enable_compilation_cache", False)  # a cache hit would not compile
    try:
        memory_report(config, saved=False)
    finally:
        jax.config.update("jax_enable_compilation_cache", True)
    assert "rematerialization" not in capfd.readouterr().err.lower()


def test_dry_run_reports_the_attention_share_of_what_remat_keeps():
    """remat=dots keeps matmul outputs: on the XLA path that includes every layer's [L, L] scores;
    one layer's scores and probabilities are sized per device."""
    import dataclasses

    from tests.train_fixtures import tiny_config
    from train.preflight import format_report, memory_report

    config = tiny_config(batch_size=8)
    config.model = dataclasses.replace(config.model, arch="llama", num_kv_heads=2, max_len=64, remat="dots")
    config.data.seq_len = 64
    config.mesh.shape = (2, 2, 2)
    report = memory_report(config)
    assert report["attention_kernel"] == "xla"
    # per layer: float32 scores [B, kv heads, group, L, L]: 2 rows (of 8 over data*fsdp) x 2 heads (of 4 over tensor)
    scores = 4 * 2 * 2 * 64 * 64
    assert report["saved_attention"] >= config.model.num_layers * scores
    assert report["saved_activations"] > report["saved_attention"]  # the layers' other matmul outputs
    assert report["layer_scores"] == 2 * scores  # scores and probabilities
    text = format_report(config, report)
    assert "under model.remat=dots" in text and "<- attention [L, L]" in text, text
