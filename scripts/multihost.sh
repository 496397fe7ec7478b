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

# ./launch.sh local --processes=N [--devices_per_process=K] [--dry-run] -- job args
# N processes on this machine joined over loopback; on CPU each simulates K devices
# (default 8/N). Output lines are prefixed [pI]; the first failure stops the rest.
launch_local() {
  parse_launcher_args "$@"
  local processes=2 devices="" opt
  for opt in ${OPTS[@]+"${OPTS[@]}"}; do
    case "$opt" in
      --processes=*) processes="${opt#*=}" ;;
      --devices_per_process=*) devices="${opt#*=}" ;;
      *) die "local: unknown option '$opt'; accepted: --processes=N --devices_per_process=K --module=M --dry-run" ;;
    esac
  done
  [[ "$processes" =~ ^[1-9][0-9]*$ ]] || die "local: --processes=$processes; accepted: an integer >= 1"
  devices="${devices:-$(( 8 / processes > 0 ? 8 / processes : 1 ))}"
  [[ "$DRY_RUN" == 1 ]] || ensure_venv ""
  local port; port="$(free_port)"
  local flags="${XLA_FLAGS:-} --xla_force_host_platform_device_count=$devices"
  local i pids=()
  for (( i = 0; i < processes; i++ )); do
    local cmd=(env "XLA_FLAGS=${flags# }" MESHLM_COORDINATOR="127.0.0.1:$port"
               MESHLM_NUM_PROCESSES="$processes" MESHLM_PROCESS_ID="$i"
               "$PY" -m "$MODULE" ${JOB_ARGS[@]+"${JOB_ARGS[@]}"})
    if [[ "$DRY_RUN" == 1 ]]; then show_cmd "${cmd[@]}"; continue; fi
    "${cmd[@]}" > >(sed -u "s/^/[p$i] /") 2>&1 &
    pids+=($!)
  done
  [[ "$DRY_RUN" == 1 ]] && return 0
  local status=0 pid
  for (( i = 0; i < processes; i++ )); do
    if ! wait -n "${pids[@]}"; then
      status=1
      echo "launch.sh: a process failed; stopping the others" >&2
      for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
      break
    fi
  done
  wait 2>/dev/null || true  # the output prefixers
  return "$status"
}

# ./launch.sh tpu --name=NAME --zone=ZONE [--project=P] [--dry-run] -- job args
# Copies this checkout to every worker of a Cloud TPU VM, installs the venv there (with
# the tpu extra) and runs the same command on all workers; worker 0 streams its output,
# the others write ~/meshlm/worker.log.
launch_tpu() {
  parse_launcher_args "$@"
  local name="" zone="" project="" opt
  for opt in ${OPTS[@]+"${OPTS[@]}"}; do
    case "$opt" in
      --name=*) name="${opt#*=}" ;;
      --zone=*) zone="${opt#*=}" ;;
      --project=*) project="${opt#*=}" ;;
      *) die "tpu: unknown option '$opt'; accepted: --name= --zone= --project= --module= --dry-run" ;;
    esac
  done
  [[ -n "$name" && -n "$zone" ]] || die "tpu: --name=NAME and --zone=ZONE are required"
  local where=(--zone="$zone" --worker=all)
  [[ -n "$project" ]] && where+=(--project="$project")
  local tarball="${TMPDIR:-/tmp}/meshlm-$name.tar.gz"
  run_or_show tar -czf "$tarball" -C "$ROOT" --exclude=./.venv --exclude=./.cache --exclude=./.git \
    --exclude=./workdirs .
  run_or_show gcloud compute tpus tpu-vm scp "$tarball" "$name:meshlm.tar.gz" "${where[@]}"
  local job; job="$(show_cmd ./launch.sh run "$MODULE" ${JOB_ARGS[@]+"${JOB_ARGS[@]}"})"
  # The worker number comes from the TPU metadata server; only worker 0 streams.
  local remote="set -e; mkdir -p ~/meshlm && tar -xzf ~/meshlm.tar.gz -C ~/meshlm && cd ~/meshlm"
  remote+="; export MESHLM_EXTRAS=tpu MESHLM_DISTRIBUTED=auto"
  remote+="; w=\$(curl -s -H Metadata-Flavor:Google http://metadata.google.internal/computeMetadata/v1/instance/attributes/agent-worker-number)"
  remote+="; if [ \"\$w\" = 0 ]; then $job; else $job > worker.log 2>&1; fi"
  run_or_show gcloud compute tpus tpu-vm ssh "$name" "${where[@]}" --command="$remote"
}

# ./launch.sh slurm [--nodes=N] [--gpus_per_node=G] [--partition=P] [--time=T]
#                   [--account=A] [--script=PATH] [--dry-run] -- job args
# Writes an sbatch script (one task per node, all its GPUs) whose srun runs the job on
# every node; train/distributed.py maps SLURM's variables to jax.distributed. The venv
# is built here first (a shared filesystem is assumed), then the script is submitted.
launch_slurm() {
  parse_launcher_args "$@"
  local nodes=1 gpus=8 partition="" time="" account="" script="" opt
  for opt in ${OPTS[@]+"${OPTS[@]}"}; do
    case "$opt" in
      --nodes=*) nodes="${opt#*=}" ;;
      --gpus_per_node=*) gpus="${opt#*=}" ;;
      --partition=*) partition="${opt#*=}" ;;
      --time=*) time="${opt#*=}" ;;
      --account=*) account="${opt#*=}" ;;
      --script=*) script="${opt#*=}" ;;
      *) die "slurm: unknown option '$opt'; accepted: --nodes= --gpus_per_node= --partition= --time= --account= --script= --module= --dry-run" ;;
    esac
  done
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
srun $(show_cmd "$PY" -m "$MODULE" ${JOB_ARGS[@]+"${JOB_ARGS[@]}"})"
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
