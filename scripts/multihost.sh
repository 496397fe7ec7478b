# Multi-process launchers for launch.sh (sourced; uses its $ROOT, $PY, die, ensure_venv).
#
# Job args (after --) are the flags of `python -m train.main`; put --module=M before --
# to run another entry point (a command name such as evaluate, or a module path). Every process runs the same command;
# train/distributed.py joins them into one JAX job.

# Prints a command as one line that a shell reads back as the same words (what --dry-run shows).
show_cmd() {
  local arg out=()
  for arg in "$@"; do
    if [[ "$arg" =~ ^[A-Za-z0-9_./:=@%+,-]+$ ]]; then out+=("$arg"); else out+=("'${arg//\'/\'\\\'\'}'"); fi
  done
  echo "${out[*]}"
}

# Runs a command, or only prints it under --dry-run.
run_or_show() { if [[ "$DRY_RUN" == 1 ]]; then show_cmd "$@"; else "$@"; fi; }

# Splits "[launcher options] -- job args" into OPTS (array) and JOB_ARGS (array);
# --dry-run and --module=M are taken out here since every launcher has them.
parse_launcher_args() {
  OPTS=(); JOB_ARGS=(); DRY_RUN=0; MODULE=train.main
  while [[ $# -gt 0 ]]; do
    case "$1" in
      --) shift; JOB_ARGS=("$@"); return 0 ;;
      --dry-run) DRY_RUN=1 ;;
      --module=*) MODULE="${1#--module=}"; MODULE="$(command_module "$MODULE" || echo "$MODULE")" ;;
      *) OPTS+=("$1") ;;
    esac
    shift
  done
}

free_port() { "$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# ./launch.sh local --processes=N [--devices_per_process=K] [--grace=S] [--dry-run] -- job args
# N processes on this machine joined over loopback; on CPU each simulates K devices
# (default 8/N). Output lines are prefixed [pI]. When one fails (or the launcher gets
# SIGINT/SIGTERM), the others get SIGTERM, then SIGKILL if still running S seconds later
# (default 30; they normally stop by themselves within seconds: train/peers.py).
launch_local() {
  parse_launcher_args "$@"
  local processes=2 devices="" grace=30 opt
  for opt in ${OPTS[@]+"${OPTS[@]}"}; do
    case "$opt" in
      --processes=*) processes="${opt#*=}" ;;
      --devices_per_process=*) devices="${opt#*=}" ;;
      --grace=*) grace="${opt#*=}" ;;
      *) die "local: unknown option '$opt'; accepted: --processes=N --devices_per_process=K --grace=S --module=M --dry-run" ;;
    esac
  done
  [[ "$processes" =~ ^[1-9][0-9]*$ ]] || die "local: --processes=$processes; accepted: an integer >= 1"
  [[ "$grace" =~ ^[0-9]+$ ]] || die "local: --grace=$grace; accepted: seconds, an integer >= 0"
  devices="${devices:-$(( 8 / processes > 0 ? 8 / processes : 1 ))}"
  [[ "$DRY_RUN" == 1 ]] || ensure_venv ""
  local port; port="$(free_port)"
  local flags="${XLA_FLAGS:-} --xla_force_host_platform_device_count=$devices"
  local i pids=() prefixers=() out
  for (( i = 0; i < processes; i++ )); do
    local cmd=(env "XLA_FLAGS=${flags# }" MESHLM_COORDINATOR="127.0.0.1:$port"
               MESHLM_NUM_PROCESSES="$processes" MESHLM_PROCESS_ID="$i"
               "$PY" -m "$MODULE" ${JOB_ARGS[@]+"${JOB_ARGS[@]}"})
    if [[ "$DRY_RUN" == 1 ]]; then show_cmd "${cmd[@]}"; continue; fi
    exec {out}> >(sed -u "s/^/[p$i] /")
    prefixers+=($!)
    "${cmd[@]}" >&"$out" 2>&1 &
    pids+=($!)
    exec {out}>&-
    echo "launch.sh: process $i: pid $!" >&2
  done
  [[ "$DRY_RUN" == 1 ]] && return 0
  STOP_AT=""
  trap 'stop_processes "$grace" "launch.sh: interrupted"' INT TERM
  local status=0 alive code ended
  exec 3>&2  # bash reports each killed process on stderr: not needed, the loop says what happened
  {
    while :; do
      alive=0 ended=()
      for (( i = 0; i < processes; i++ )); do
        [[ -n "${pids[i]}" ]] || continue
        if kill -0 "${pids[i]}" 2>/dev/null; then alive=$(( alive + 1 )); continue; fi
        code=0; wait "${pids[i]}" 2>/dev/null || code=$?
        pids[i]=""
        (( code == 0 )) || ended+=("$code:$i")
      done
      # The first failure is the cause; if several processes ended together, one that did not
      # stop because a peer died (status 75, train/peers.py) is the cause.
      if (( ${#ended[@]} > 0 && status == 0 )); then
        local cause="${ended[0]}" entry
        for entry in "${ended[@]}"; do [[ "${entry%%:*}" == 75 ]] || { cause="$entry"; break; }; done
        status="${cause%%:*}"
        stop_processes "$grace" "launch.sh: process ${cause#*:} exited with status $status"
      fi
      (( alive > 0 )) || break
      if [[ -n "$STOP_AT" ]] && (( SECONDS >= STOP_AT )); then
        echo "launch.sh: processes still running ${grace}s after SIGTERM; sending SIGKILL" >&3
        for i in "${!pids[@]}"; do [[ -z "${pids[i]}" ]] || kill -KILL "${pids[i]}" 2>/dev/null || true; done
        STOP_AT=""
      fi
      sleep 0.2
    done
  } 2>/dev/null
  trap - INT TERM
  # The prefixers end when the last writer (a process, or its stderr relay) is gone.
  local deadline=$(( SECONDS + 10 ))
  for i in "${prefixers[@]}"; do
    while kill -0 "$i" 2>/dev/null && (( SECONDS < deadline )); do sleep 0.05; done
  done
  return "$status"
}

# Sends SIGTERM to the local job's running processes (pids) once and arms the SIGKILL deadline;
# says so on fd 3 (the launcher's stderr).
stop_processes() {
  [[ -z "$STOP_AT" ]] || return 0
  STOP_AT=$(( SECONDS + $1 ))
  local pid running=()
  for pid in "${pids[@]}"; do [[ -z "$pid" ]] || ! kill -0 "$pid" 2>/dev/null || running+=("$pid"); done
  if (( ${#running[@]} == 0 )); then echo "$2" >&3; return 0; fi
  echo "$2; stopping the others (SIGTERM, then SIGKILL after $1s)" >&3
  for pid in "${running[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
}

# ./launch.sh tpu --name=NAME --zone=ZONE [--project=P] [--grace=S] [--dry-run] -- job args
# Copies this checkout to every worker of a Cloud TPU VM, installs the venv there (with
# the tpu extra) and runs the same command on all workers; worker 0 streams its output,
# the others write ~/meshlm/worker.log. Each worker's process runs under
# scripts/supervise.sh: when its ssh session ends (Ctrl-C here) it gets SIGTERM, then
# SIGKILL S seconds later (default 30), so no process is left holding the TPU.
launch_tpu() {
  parse_launcher_args "$@"
  local name="" zone="" project="" grace=30 opt
  for opt in ${OPTS[@]+"${OPTS[@]}"}; do
    case "$opt" in
      --name=*) name="${opt#*=}" ;;
      --zone=*) zone="${opt#*=}" ;;
      --project=*) project="${opt#*=}" ;;
      --grace=*) grace="${opt#*=}" ;;
      *) die "tpu: unknown option '$opt'; accepted: --name= --zone= --project= --grace= --module= --dry-run" ;;
    esac
  done
  [[ "$grace" =~ ^[0-9]+$ ]] || die "tpu: --grace=$grace; accepted: seconds, an integer >= 0"
  [[ -n "$name" && -n "$zone" ]] || die "tpu: --name=NAME and --zone=ZONE are required"
  local where=(--zone="$zone" --worker=all)
  [[ -n "$project" ]] && where+=(--project="$project")
  local tarball="${TMPDIR:-/tmp}/meshlm-$name.tar.gz"
  run_or_show tar -czf "$tarball" -C "$ROOT" --exclude=./.venv --exclude=./.cache --exclude=./.git \
    --exclude=./workdirs .
  run_or_show gcloud compute tpus tpu-vm scp "$tarball" "$name:meshlm.tar.gz" "${where[@]}"
  local job
  job="$(show_cmd scripts/supervise.sh --grace="$grace" -- ./launch.sh run "$MODULE" ${JOB_ARGS[@]+"${JOB_ARGS[@]}"})"
  # The worker number comes from the TPU metadata server; only worker 0 streams.
  local remote="set -e; mkdir -p ~/meshlm && tar -xzf ~/meshlm.tar.gz -C ~/meshlm && cd ~/meshlm"
  remote+="; export MESHLM_EXTRAS=tpu MESHLM_DISTRIBUTED=auto"
  remote+="; w=\$(curl -s -H Metadata-Flavor:Google http://metadata.google.internal/computeMetadata/v1/instance/attributes/agent-worker-number)"
  remote+="; if [ \"\$w\" = 0 ]; then $job; else $job > worker.log 2>&1; fi"
  run_or_show gcloud compute tpus tpu-vm ssh "$name" "${where[@]}" --command="$remote"
}

# ./launch.sh slurm [--nodes=N] [--gpus_per_node=G] [--partition=P] [--time=T]
#                   [--account=A] [--script=PATH] [--grace=S] [--dry-run] -- job args
# Writes an sbatch script (one task per node, all its GPUs) whose srun runs the job on
# every node; train/distributed.py maps SLURM's variables to jax.distributed. The venv
# is built here first (a shared filesystem is assumed), then the script is submitted.
# srun --kill-on-bad-exit stops the step when a task fails, and each task runs under
# scripts/supervise.sh, which turns SLURM's SIGTERM into SIGKILL after S seconds (default 30).
launch_slurm() {
  parse_launcher_args "$@"
  local nodes=1 gpus=8 partition="" time="" account="" script="" grace=30 opt
  for opt in ${OPTS[@]+"${OPTS[@]}"}; do
    case "$opt" in
      --nodes=*) nodes="${opt#*=}" ;;
      --gpus_per_node=*) gpus="${opt#*=}" ;;
      --partition=*) partition="${opt#*=}" ;;
      --time=*) time="${opt#*=}" ;;
      --account=*) account="${opt#*=}" ;;
      --script=*) script="${opt#*=}" ;;
      --grace=*) grace="${opt#*=}" ;;
      *) die "slurm: unknown option '$opt'; accepted: --nodes= --gpus_per_node= --partition= --time= --account= --script= --grace= --module= --dry-run" ;;
    esac
  done
  [[ "$grace" =~ ^[0-9]+$ ]] || die "slurm: --grace=$grace; accepted: seconds, an integer >= 0"
  [[ "$nodes" =~ ^[1-9][0-9]*$ ]] || die "slurm: --nodes=$nodes; accepted: an integer >= 1"
  script="${script:-$ROOT/workdirs/slurm/meshlm-$(date +%Y%m%d-%H%M%S).sbatch}"
  local body
  body="#!/usr/bin/env bash
#SBATCH --job-name=meshlm
#SBATCH --nodes=$nodes
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=$gpus
#SBATCH --output=$ROOT/workdirs/slurm/%j.out
${partition:+#SBATCH --partition=$partition
}${time:+#SBATCH --time=$time
}${account:+#SBATCH --account=$account
}set -euo pipefail
cd $(printf '%q' "$ROOT")
export PYTHONPATH=$(printf '%q' "$ROOT")
# One process per node; SLURM_NTASKS, SLURM_PROCID, SLURM_STEP_NODELIST -> jax.distributed.
srun --kill-on-bad-exit=1 $(show_cmd "$ROOT/scripts/supervise.sh" --grace="$grace" -- "$PY" -m "$MODULE" ${JOB_ARGS[@]+"${JOB_ARGS[@]}"})"
  if [[ "$DRY_RUN" == 1 ]]; then
    echo "# $script"
    echo "$body"
    show_cmd sbatch "$script"
    return 0
  fi
  MESHLM_EXTRAS=cuda ensure_venv ""
  mkdir -p "$(dirname "$script")" "$ROOT/workdirs/slurm"
  echo "$body" >"$script"
  echo "launch.sh: wrote $script"
  sbatch "$script"
}
