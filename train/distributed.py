"""Joins this process to a multi-process JAX job, before any other JAX work.

Three ways to say a job has several processes, first match wins:

- explicit: --coordinator=HOST:PORT --num_processes=N --process_id=I (or the env vars
  MESHLM_COORDINATOR, MESHLM_NUM_PROCESSES, MESHLM_PROCESS_ID that `launch.sh local`
  sets) with N > 1;
- SLURM: SLURM_NTASKS > 1 inside a job step (`srun`); JAX maps SLURM_JOB_ID,
  SLURM_STEP_NODELIST, SLURM_NTASKS, SLURM_PROCID and SLURM_LOCALID itself;
- Cloud TPU pods: MESHLM_DISTRIBUTED=auto (set by `launch.sh tpu`) or a multi-host
  TPU_WORKER_HOSTNAMES; JAX reads the worker list from the TPU metadata server.

Otherwise the job is one process and nothing is called. On CPU the processes' devices
talk over gloo (JAX's default CPU collectives).

A joined process also joins the peer watchdog (train/peers.py), so that when a process of
the job dies the others stop within seconds with one line naming it, and (unless --debug)
sends its stderr through train/stderr_relay.py, which turns JAX's abort dump on the death
of process 0 into that one line too.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Callable, Mapping, TypeVar

from train.config import ConfigError

T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class Plan:
    """How this process joins the job: `kind` is one of single, explicit, slurm, tpu."""

    kind: str
    coordinator: str = ""
    num_processes: int = 1
    process_id: int = 0


def plan(coordinator: str = "", num_processes: int = 0, process_id: int = -1,
         env: Mapping[str, str] | None = None) -> Plan:
    """Decides from flags (which win) and the environment; raises ConfigError on a half setup."""
    env = os.environ if env is None else env
    coordinator = coordinator or env.get("MESHLM_COORDINATOR", "")
    num_processes = num_processes or _int(env, "MESHLM_NUM_PROCESSES", 0)
    process_id = process_id if process_id >= 0 else _int(env, "MESHLM_PROCESS_ID", -1)
    if num_processes > 1 or coordinator:
        if not coordinator or num_processes < 1 or not 0 <= process_id < num_processes:
            raise ConfigError(
                f"multi-process flags incomplete: coordinator={coordinator!r}, num_processes={num_processes}, "
                f"process_id={process_id}; accepted: all three, with 0 <= process_id < num_processes")
        if num_processes > 1:
            return Plan("explicit", coordinator, num_processes, process_id)
    if env.get("MESHLM_DISTRIBUTED") == "off":
        return Plan("single")
    if _int(env, "SLURM_NTASKS", 1) > 1 and "SLURM_PROCID" in env:
        return Plan("slurm", num_processes=_int(env, "SLURM_NTASKS", 1), process_id=_int(env, "SLURM_PROCID", 0))
    if env.get("MESHLM_DISTRIBUTED") == "auto" or "," in env.get("TPU_WORKER_HOSTNAMES", ""):
        return Plan("tpu")
    return Plan("single")


def initialize(job: Plan, relay: bool = True) -> None:
    """Calls jax.distributed.initialize for a multi-process plan, then joins the watchdog; no-op for one."""
    if job.kind == "single":
        return
    import jax  # only now: importing jax before this point is fine, using a backend is not
    from jax._src import distributed as jax_distributed

    from train import peers, stderr_relay

    if job.kind == "explicit":
        jax.distributed.initialize(coordinator_address=job.coordinator, num_processes=job.num_processes,
                                   process_id=job.process_id)
    else:  # JAX's cluster detection reads SLURM's variables or the TPU metadata server
        jax.distributed.initialize()
    state = jax_distributed.global_state  # what initialize settled on, without starting a backend
    coordinator = state.coordinator_address or job.coordinator
    if relay:
        stderr_relay.install(state.process_id, state.num_processes, coordinator)
    peers.start(state.process_id, state.num_processes, coordinator.rsplit(":", 1)[0].strip("[]"))


def _int(env: Mapping[str, str], name: str, default: int) -> int:
    text = env.get(name, "")
    if not text:
        return default
    try:
        return int(text)
    except ValueError:
        raise ConfigError(f"environment variable {name}={text!r}; accepted: an integer") from None


def process_barrier(name: str, timeout_seconds: float) -> None:
    """Waits until every process of the job reaches `name`; a no-op for one process.

    Through JAX's coordination service rather than a device collective: on CPU a gloo
    collective gives up when a peer is 30 s late, and this waits as long as it is told.
    """
    import jax

    if jax.process_count() == 1:
        return
    from jax._src import distributed as jax_distributed

    jax_distributed.global_state.client.wait_at_barrier(f"meshlm/{name}", int(timeout_seconds * 1000))


def primary_first(build: Callable[[], T]) -> T:
    """Runs `build` on process 0, then on the others once it is done.

    Building files (tokenizer, packed data) twice at once in one shared workdir would
    race; after process 0 they are found and loaded (or, on hosts with their own disks,
    rebuilt identically: every step of building is deterministic).
    """
    import jax

    if jax.process_count() == 1:
        return build()
    from jax.experimental import multihost_utils

    result = build() if jax.process_index() == 0 else None
    multihost_utils.sync_global_devices("meshlm: process 0 built its files")
    return build() if result is None else result
