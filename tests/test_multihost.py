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
    lines = _launch("tpu", "--name=pod", "--zone=us-central2-b", "--project=proj", "--logs=/tmp/pod-logs",
                    "--dry-run", "--", *JOB)
    tar, scp, ssh = (shlex.split(line) for line in lines[:3])
    assert tar[:2] == ["tar", "-czf"] and tar[2] == "/tmp/meshlm-pod.tar.gz" and "--exclude=./.venv" in tar
    where = ["--zone=us-central2-b", "--worker=all", "--project=proj"]
    assert scp == ["gcloud", "compute", "tpus", "tpu-vm", "scp", "/tmp/meshlm-pod.tar.gz", "pod:meshlm.tar.gz", *where]
    assert ssh[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "pod"] and ssh[6:9] == where
    remote = ssh[9].removeprefix("--command=")
    assert "tar -xzf ~/meshlm.tar.gz -C ~/meshlm" in remote and "MESHLM_EXTRAS=tpu MESHLM_DISTRIBUTED=auto" in remote
    job = ("bash scripts/tpu_worker.sh --grace=30 -- ./launch.sh run train.main --config=configs/bert_tiny.py "
           "'--workdir=/shared/run 1'")
    assert remote.endswith(f"; {job}")
    assert lines[3] == "# every worker's lines also go to /tmp/pod-logs/<worker>.log"


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


FAKE_GCLOUD = r"""#!/usr/bin/env bash
# gcloud compute tpus tpu-vm {scp,ssh} for a fake 2-worker TPU VM: each worker is a folder under
# $FAKE_TPU/NODE/W used as HOME; ssh --worker=all runs the command in each, concurrently.
echo "$*" >>"$FAKE_TPU/calls.log"
verb="$4"
case "$verb" in
  scp) node="${6%%:*}"; for w in 0 1; do mkdir -p "$FAKE_TPU/$node/$w"; cp "$5" "$FAKE_TPU/$node/$w/${6#*:}"; done ;;
  ssh) node="$5"; command=""
       for arg in "$@"; do [[ "$arg" == --command=* ]] && command="${arg#--command=}"; done
       for w in 0 1; do (cd "$FAKE_TPU/$node/$w" && HOME="$PWD" MESHLM_WORKER_ID=$w bash -c "$command") & done
       wait ;;
  *) echo "fake gcloud: $*" >&2; exit 1 ;;
esac
"""

FAKE_JOB = """import os, pathlib, sys, time
print("step 1 on worker", os.environ["MESHLM_WORKER_ID"], flush=True)
started = pathlib.Path(os.environ["TMPDIR"]) / "worker0-started"
if os.environ["MESHLM_WORKER_ID"] == "0":
    started.touch()
else:  # dies once worker 0 is surely running (a busy machine may start it later)
    for _ in range(600):
        if started.exists():
            break
        time.sleep(0.1)
    print("RESOURCE_EXHAUSTED: out of memory on the TPU", flush=True)
    sys.exit(3)
time.sleep(120)  # worker 0 would run on: the launcher must stop it
"""


def test_tpu_job_streams_every_worker_and_a_dead_worker_stops_the_others(tmp_path):
    """launch.sh tpu end to end on a fake 2-worker pod (a fake gcloud runs each worker locally)."""
    fake = tmp_path / "tpu"
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "gcloud").write_text(FAKE_GCLOUD)
    (tmp_path / "bin" / "gcloud").chmod(0o755)
    (tmp_path / "job").mkdir()
    (tmp_path / "job" / "fakejob.py").write_text(FAKE_JOB)
    venv = tmp_path / "venv"  # a venv launch.sh finds set up (its stamp), so it installs nothing
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").symlink_to(sys.executable)
    digest = __import__("hashlib").sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    (venv / ".meshlm-stamp").write_text(f"{digest} extras=[tpu]\n")
    fake.mkdir()
    env = {**os.environ, "PATH": f"{tmp_path / 'bin'}:{os.environ['PATH']}", "FAKE_TPU": str(fake),
           "TMPDIR": str(tmp_path), "MESHLM_VENV": str(venv), "PYTHONPATH": str(tmp_path / "job")}
    logs = tmp_path / "logs"
    done = subprocess.run([str(ROOT / "launch.sh"), "tpu", "--name=pod", "--zone=z", f"--logs={logs}",
                           "--grace=5", "--module=fakejob", "--"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=100)
    assert done.returncode == 3, done.stdout + done.stderr
    assert "[w0] step 1 on worker 0" in done.stdout and "[w1] step 1 on worker 1" in done.stdout
    assert ("launch.sh: worker w1 exited with status 3; its last lines:\n"
            "  [w1] step 1 on worker 1\n  [w1] RESOURCE_EXHAUSTED: out of memory on the TPU\n") in done.stderr
    assert "tpu_worker.sh: stopped the job" in done.stderr  # worker 0's, by the launcher's --stop
    assert (logs / "w0.log").read_text() == "step 1 on worker 0\n"
    assert (logs / "w1.log").read_text().splitlines()[-1] == "RESOURCE_EXHAUSTED: out of memory on the TPU"
    assert (fake / "pod" / "1" / "meshlm" / "logs" / "w1.log").is_file()  # each worker keeps its own
    calls = (fake / "calls.log").read_text().splitlines()
    assert calls[-1].endswith("--command=cd ~/meshlm && bash scripts/tpu_worker.sh --stop --grace=5")


def test_tpu_stop_and_multi_slice_dry_runs():
    stop = [shlex.split(line) for line in _launch("tpu", "--name=pod", "--zone=z", "--project=p", "--stop",
                                                 "--dry-run")]
    assert stop == [["gcloud", "compute", "tpus", "tpu-vm", "ssh", "pod", "--zone=z", "--worker=all", "--project=p",
                     "--command=cd ~/meshlm && bash scripts/tpu_worker.sh --stop --grace=30"]]
    stop = [shlex.split(line)[5] for line in _launch("tpu", "--name=pod", "--zone=z", "--num_slices=2", "--stop",
                                                     "--dry-run")]
    assert stop == ["pod-0", "pod-1"]
    lines = [shlex.split(line) for line in _launch("tpu", "--name=pod", "--zone=z", "--num_slices=2", "--dry-run",
                                                   "--", *JOB)]
    assert [cmd[4:6] for cmd in lines[1:3]] == [["scp", "/tmp/meshlm-pod.tar.gz"]] * 2
    assert lines[3][:6] == ["gcloud", "compute", "tpus", "tpu-vm", "describe", "pod-0"]
    for slice_id, ssh in enumerate(lines[4:]):
        assert ssh[5] == f"pod-{slice_id}"
        remote = ssh[-1].removeprefix("--command=")
        assert (f"MEGASCALE_COORDINATOR_ADDRESS=$COORDINATOR_IP:8080 MEGASCALE_NUM_SLICES=2 "
                f"MEGASCALE_SLICE_ID={slice_id} MEGASCALE_PORT=8080") in remote
