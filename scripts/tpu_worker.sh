#!/usr/bin/env bash
# One worker's side of `launch.sh tpu` (run in ~/meshlm of every worker of every slice).
#
#   scripts/tpu_worker.sh [--grace=S] -- command [args...]    run the job
#   scripts/tpu_worker.sh --stop [--grace=S]                  stop this worker's job
#
# The job runs under scripts/supervise.sh (SIGTERM, then SIGKILL S seconds later). Its output
# goes to logs/TAG.log on this worker and, each line prefixed [TAG], to stdout, which the
# launcher reads over ssh: TAG is wN (worker N of the slice) or sSwN (slice S of a
# multi-slice job). A last line "[TAG] meshlm-exit STATUS" gives the job's exit status. The
# worker number comes from the TPU metadata server (MESHLM_WORKER_ID overrides it).
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
grace=30 stop=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --grace=*) grace="${1#*=}"; shift ;;
    --stop) stop=1; shift ;;
    --) shift; break ;;
    *) echo "tpu_worker.sh: unknown option '$1'; usage: tpu_worker.sh [--grace=S] -- command | --stop" >&2; exit 2 ;;
  esac
done

if [[ "$stop" == 1 ]]; then
  # The job's supervise.sh turns this SIGTERM into SIGTERM, then SIGKILL, for the job.
  pid="$(cat job.pid 2>/dev/null || true)"
  if [[ -z "$pid" ]] || ! kill -0 "$pid" 2>/dev/null; then
    echo "tpu_worker.sh: no job running here"
    exit 0
  fi
  kill -TERM "$pid"
  for (( waited = 0; waited <= grace + 10; waited++ )); do
    kill -0 "$pid" 2>/dev/null || { echo "tpu_worker.sh: stopped the job (pid $pid)"; exit 0; }
    sleep 1
  done
  echo "tpu_worker.sh: the job (pid $pid) is still running $((grace + 10))s after SIGTERM" >&2
  exit 1
fi

[[ $# -gt 0 ]] || { echo "tpu_worker.sh: no command given" >&2; exit 2; }
worker="${MESHLM_WORKER_ID:-$(curl -s -H Metadata-Flavor:Google \
  http://metadata.google.internal/computeMetadata/v1/instance/attributes/agent-worker-number)}"
tag="w$worker"
[[ -z "${MEGASCALE_SLICE_ID:-}" ]] || tag="s${MEGASCALE_SLICE_ID}w$worker"
mkdir -p logs
# In the pipeline's first part BASHPID is the subshell that exec makes supervise.sh: its pid
# is what --stop signals.
{ echo "$BASHPID" >job.pid; exec scripts/supervise.sh --grace="$grace" -- "$@"; } 2>&1 |
  tee "logs/$tag.log" | sed -u "s/^/[$tag] /"
status="${PIPESTATUS[0]}"
echo "[$tag] meshlm-exit $status"
exit "$status"
