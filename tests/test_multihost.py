"""Multi-process jobs: launch.sh's launchers (dry runs), the join plan, and 2 processes = 1."""

import json
import os
import pathlib
import shlex
import subprocess
import sys

import pytest

from train.config import ConfigError
from train.distributed import Plan, plan

ROOT = pathlib.Path(__file__).resolve().parents[1]
JOB = ["--config=configs/bert_tiny.py", "--workdir=/shared/run 1"]


def _launch(*args: str, env: dict[str, str] | None = None) -> list[str]:
    result = subprocess.run([str(ROOT / "launch.sh"), *args], cwd=ROOT, capture_output=True, text=True,
                            timeout=300, env={**os.environ, "TMPDIR": "/tmp"} if env is None else env)
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()


def test_plan_from_flags_env_slurm_and_tpu():
    assert plan(env={}) == Plan("single")
    assert plan("10.0.0.1:1234", 2, 1, env={}) == Plan("explicit", "10.0.0.1:1234", 2, 1)
    env = {"MESHLM_COORDINATOR": "h:1", "MESHLM_NUM_PROCESSES": "4", "MESHLM_PROCESS_ID": "3"}
    assert plan(env=env) == Plan("explicit", "h:1", 4, 3)
    assert plan(env={"SLURM_NTASKS": "2", "SLURM_PROCID": "1"}) == Plan("slurm", num_processes=2, process_id=1)
    assert plan(env={"SLURM_NTASKS": "1", "SLURM_PROCID": "0"}) == Plan("single")
    assert plan(env={"MESHLM_DISTRIBUTED": "auto"}).kind == "tpu"
    assert plan(env={"TPU_WORKER_HOSTNAMES": "w0,w1"}).kind == "tpu"
    with pytest.raises(ConfigError, match="process_id=-1"):
        plan("h:1", 2, env={})


def test_tpu_dry_run_copies_sets_up_and_runs_on_all_workers():
    lines = _launch("tpu", "--name=pod", "--zone=us-central2-b", "--project=proj", "--dry-run", "--", *JOB)
    tar, scp, ssh = (shlex.split(line) for line in lines)
    assert tar[:2] == ["tar", "-czf"] and tar[2] == "/tmp/meshlm-pod.tar.gz" and "--exclude=./.venv" in tar
    where = ["--zone=us-central2-b", "--worker=all", "--project=proj"]
    assert scp == ["gcloud", "compute", "tpus", "tpu-vm", "scp", "/tmp/meshlm-pod.tar.gz", "pod:meshlm.tar.gz", *where]
    assert ssh[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "pod"] and ssh[6:9] == where
    remote = ssh[9].removeprefix("--command=")
    assert "tar -xzf ~/meshlm.tar.gz -C ~/meshlm" in remote and "MESHLM_EXTRAS=tpu MESHLM_DISTRIBUTED=auto" in remote
    job = ("scripts/supervise.sh --grace=30 -- ./launch.sh run train.main --config=configs/bert_tiny.py "
           "'--workdir=/shared/run 1'")
    assert f'if [ "$w" = 0 ]; then {job}; else {job} > worker.log 2>&1; fi' in remote


def test_slurm_dry_run_writes_an_sbatch_script_with_srun():
    lines = _launch("slurm", "--nodes=4", "--gpus_per_node=8", "--partition=gpu", "--time=1:00:00",
                    "--script=/tmp/x.sbatch", "--dry-run", "--", *JOB)
    assert lines[0] == "# /tmp/x.sbatch" and lines[-1] == "sbatch /tmp/x.sbatch"
    script = lines[1:-1]
    for directive in ("--nodes=4", "--ntasks-per-node=1", "--gpus-per-node=8", "--partition=gpu", "--time=1:00:00"):
        assert f"#SBATCH {directive}" in script
    srun = shlex.split(script[-1])
    assert srun[:2] == ["srun", "--kill-on-bad-exit=1"] and srun[2].endswith("scripts/supervise.sh")
    assert srun[3:5] == ["--grace=30", "--"] and srun[6:] == ["-m", "train.main", *JOB]


def test_local_dry_run_sets_one_coordinator_and_process_ids():
    lines = [shlex.split(line) for line in _launch("local", "--processes=2", "--dry-run", "--", *JOB)]
    assert [cmd[4] for cmd in lines] == ["MESHLM_PROCESS_ID=0", "MESHLM_PROCESS_ID=1"]
    assert lines[0][2] == lines[1][2] and lines[0][2].startswith("MESHLM_COORDINATOR=127.0.0.1:")
    assert all("--xla_force_host_platform_device_count=4" in cmd[1] for cmd in lines)
    assert lines[0][-4:] == ["-m", "train.main", *JOB]


def test_malloc_asks_for_huge_pages_unless_the_user_set_it(tmp_path):
    """launch.sh's GLIBC_TUNABLES: set for every job, a user's own kept."""
    (tmp_path / "show_tunables.py").write_text("import os; print(os.environ.get('GLIBC_TUNABLES'))\n")
    env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "LD_PRELOAD")}
    env.update(PYTHONPATH=str(tmp_path))
    assert _launch("run", "show_tunables", env=env)[-1] == "glibc.malloc.hugetlb=1"
    mine = "glibc.malloc.arena_max=4"
    assert _launch("run", "show_tunables", env={**env, "GLIBC_TUNABLES": mine})[-1] == mine


# A 2-layer model on a 100 KB corpus slice: enough to see 4 steps of real training.
QUICK = ["--config=configs/bert_tiny.py", "--config.data.max_corpus_bytes=100000",
         "--config.model.vocab_size=500", "--config.model.hidden=32", "--config.model.mlp_dim=64",
         "--config.data.seq_len=32", "--config.train.steps=4", "--config.train.batch_size=8",
         "--config.mesh.shape=2,2,2", "--config.train.log_every=1", "--config.train.eval_every=0",
         "--config.train.eval_batches=1", "--config.train.checkpoint_every=100",
         "--config.train.peak_flops_per_device=1e11"]


def _train_losses(workdir: pathlib.Path) -> list[float]:
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["split"] == "train"]
    assert {"tokens_per_sec_per_device", "mfu"} <= set(train[0])
    return [r["loss"] for r in train]


@pytest.mark.slow
def test_two_processes_train_like_one(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MESHLM_CACHE": str(tmp_path / "cache"), "JAX_PLATFORMS": "cpu"}
    env.pop("XLA_FLAGS", None)
    one = subprocess.run(
        [sys.executable, "-m", "train.main", *QUICK, f"--workdir={tmp_path / 'one'}"], cwd=ROOT,
        env={**env, "XLA_FLAGS": "--xla_force_host_platform_device_count=8"}, capture_output=True, text=True,
        timeout=600)
    assert one.returncode == 0, one.stderr[-3000:]
    two = subprocess.run(
        [str(ROOT / "launch.sh"), "local", "--processes=2", "--", *QUICK, f"--workdir={tmp_path / 'two'}"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert two.returncode == 0, two.stdout[-3000:] + two.stderr[-3000:]
    assert "[p0] [train] step 4:" in two.stdout and "[p1]" in two.stdout
    losses_one, losses_two = _train_losses(tmp_path / "one"), _train_losses(tmp_path / "two")
    assert len(losses_two) == 4
    assert losses_two == pytest.approx(losses_one, rel=1e-5)
