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

# ./launch.sh tpu --name=NAME --zone=ZONE [--project=P] [--num_slices=N] [--logs=DIR] [--grace=S]
#                 [--dry-run] -- job args
# ./launch.sh tpu --name=NAME --zone=ZONE [--project=P] [--num_slices=N] --stop
# Copies this checkout to every worker of a Cloud TPU VM (or of the N slices NAME-0 ...
# NAME-{N-1}, e.g. a queued resource's nodes) and runs the same command on all of them under
# scripts/tpu_worker.sh: each worker sets up its venv (the tpu extra; a uv-managed Python
# where the image's is older than 3.11) and runs the job under scripts/supervise.sh. Every
# worker's lines come back prefixed [wN] (or [sSwN]); --logs=DIR also writes them to
# DIR/wN.log, one file per worker (each worker keeps ~/meshlm/logs/ too). When a worker's
# job fails, its last lines are shown and the job is stopped on the others (SIGTERM, then
# SIGKILL S seconds later, default 30); --stop does that from another terminal; Ctrl-C here
# closes the ssh sessions, which stops the job too. A multi-slice job gets MaxText's
# MEGASCALE_* variables (the coordinator: worker 0 of NAME-0), which JAX and libtpu read.
launch_tpu() {
  parse_launcher_args "$@"
  local name="" zone="" project="" grace=30 logs="" stop=0 slices=1 opt
  for opt in ${OPTS[@]+"${OPTS[@]}"}; do
    case "$opt" in
      --name=*) name="${opt#*=}" ;;
      --zone=*) zone="${opt#*=}" ;;
      --project=*) project="${opt#*=}" ;;
      --grace=*) grace="${opt#*=}" ;;
      --logs=*) logs="${opt#*=}" ;;
      --num_slices=*) slices="${opt#*=}" ;;
      --stop) stop=1 ;;
      *) die "tpu: unknown option '$opt'; accepted: --name= --zone= --project= --num_slices= --logs= --grace= --stop --module= --dry-run" ;;
    esac
  done
  [[ "$grace" =~ ^[0-9]+$ ]] || die "tpu: --grace=$grace; accepted: seconds, an integer >= 0"
  [[ "$slices" =~ ^[1-9][0-9]*$ ]] || die "tpu: --num_slices=$slices; accepted: an integer >= 1"
  [[ -n "$name" && -n "$zone" ]] || die "tpu: --name=NAME and --zone=ZONE are required"
  TPU_WHERE=(--zone="$zone" --worker=all)
  [[ -n "$project" ]] && TPU_WHERE+=(--project="$project")
  TPU_NODES=("$name")
  if (( slices > 1 )); then
    TPU_NODES=()
    local s
    for (( s = 0; s < slices; s++ )); do TPU_NODES+=("$name-$s"); done
  fi
  TPU_GRACE="$grace"
  if [[ "$stop" == 1 ]]; then
    stop_tpu_job
    return
  fi
  local tarball="${TMPDIR:-/tmp}/meshlm-$name.tar.gz" node
  run_or_show tar -czf "$tarball" -C "$ROOT" --exclude=./.venv --exclude=./.cache --exclude=./.git \
    --exclude=./workdirs --exclude=./logs .
  for node in "${TPU_NODES[@]}"; do
    run_or_show gcloud compute tpus tpu-vm scp "$tarball" "$node:meshlm.tar.gz" "${TPU_WHERE[@]}"
  done
  local job env="MESHLM_EXTRAS=tpu MESHLM_DISTRIBUTED=auto" coordinator=""
  job="$(show_cmd bash scripts/tpu_worker.sh --grace="$grace" -- ./launch.sh run "$MODULE" ${JOB_ARGS[@]+"${JOB_ARGS[@]}"})"
  if (( slices > 1 )); then
    local describe=(gcloud compute tpus tpu-vm describe "${TPU_NODES[0]}" --zone="$zone"
                    --format='value(networkEndpoints[0].ipAddress)')
    [[ -n "$project" ]] && describe+=(--project="$project")
    if [[ "$DRY_RUN" == 1 ]]; then
      show_cmd "${describe[@]}"
      coordinator='$COORDINATOR_IP'
    else
      coordinator="$("${describe[@]}")" || die "tpu: could not read the address of ${TPU_NODES[0]}'s worker 0"
    fi
  fi
  local commands=() s=0
  for node in "${TPU_NODES[@]}"; do
    local remote="set -e; mkdir -p ~/meshlm && tar -xzf ~/meshlm.tar.gz -C ~/meshlm && cd ~/meshlm; export $env"
    if (( slices > 1 )); then
      remote+=" MEGASCALE_COORDINATOR_ADDRESS=$coordinator:8080 MEGASCALE_NUM_SLICES=$slices"
      remote+=" MEGASCALE_SLICE_ID=$s MEGASCALE_PORT=8080"
    fi
    commands+=("$remote; $job")
    s=$(( s + 1 ))
  done
  if [[ "$DRY_RUN" == 1 ]]; then
    for (( s = 0; s < ${#TPU_NODES[@]}; s++ )); do
      show_cmd gcloud compute tpus tpu-vm ssh "${TPU_NODES[s]}" "${TPU_WHERE[@]}" --command="${commands[s]}"
    done
    [[ -z "$logs" ]] || echo "# every worker's lines also go to $logs/<worker>.log"
    return 0
  fi
  [[ -z "$logs" ]] || mkdir -p "$logs"
  local status=0
  {
    for (( s = 0; s < ${#TPU_NODES[@]}; s++ )); do
      gcloud compute tpus tpu-vm ssh "${TPU_NODES[s]}" "${TPU_WHERE[@]}" --command="${commands[s]}" &
    done
    wait
  } 2>&1 | watch_workers "$logs" stop_tpu_job || status=$?
  return "$status"
}

# Stops the job on every worker of TPU_NODES (scripts/tpu_worker.sh --stop on each).
stop_tpu_job() {
  local node
  for node in "${TPU_NODES[@]}"; do
    run_or_show gcloud compute tpus tpu-vm ssh "$node" "${TPU_WHERE[@]}" \
      --command="cd ~/meshlm && bash scripts/tpu_worker.sh --stop --grace=$TPU_GRACE"
  done
}

# Reads the workers' lines ([TAG] prefixed, see scripts/tpu_worker.sh) from stdin: prints
# them, writes each worker's to LOGS/TAG.log (a temporary folder without --logs), and when a
# worker's job fails shows its last lines and calls ON_FAILURE once (which stops the others).
# Returns the failing worker's status: the first one, unless that one only stopped because a
# peer died (75, train/peers.py) and another failed for itself.
watch_workers() {
  local logs="$1" on_failure="$2" keep=1
  if [[ -z "$logs" ]]; then logs="$(mktemp -d)"; keep=0; fi
  local status=0 line tag rest code cause=""
  while IFS= read -r line; do
    if [[ "$line" =~ ^\[((s[0-9]+)?w[0-9]+)\]\ ?(.*)$ ]]; then
      tag="${BASH_REMATCH[1]}" rest="${BASH_REMATCH[3]}"
      if [[ "$rest" =~ ^meshlm-exit\ ([0-9]+)$ ]]; then
        code="${BASH_REMATCH[1]}"
        (( code != 0 )) || continue
        if [[ -z "$cause" ]] || { (( status == 75 )) && (( code != 75 )); }; then
          echo "launch.sh: worker $tag exited with status $code; its last lines:" >&2
          tail -n 10 "$logs/$tag.log" 2>/dev/null | sed "s/^/  [$tag] /" >&2
          status="$code"
          if [[ -z "$cause" ]]; then
            cause="$tag"
            echo "launch.sh: stopping the job on the other workers" >&2
            "$on_failure" >&2 || true
          fi
        fi
        continue
      fi
      printf '%s\n' "$line"
      printf '%s\n' "$rest" >>"$logs/$tag.log"
    else
      printf '%s\n' "$line"
      printf '%s\n' "$line" >>"$logs/launcher.log"
    fi
  done
  (( keep )) || rm -rf "$logs"
  return "$status"
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
