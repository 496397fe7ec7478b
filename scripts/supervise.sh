#!/usr/bin/env bash
# Runs one job process and stops it for sure: on SIGTERM, SIGINT or SIGHUP (a closed ssh
# session, a scheduler's stop) the process gets SIGTERM (it saves and exits, or stops as
# its peers did: train/peers.py), then SIGKILL if it still runs GRACE seconds later, so
# that nothing is left holding a TPU or GPU. Exits with the process's status.
#
#   scripts/supervise.sh [--grace=SECONDS] -- command [args...]      (default grace 30)
set -uo pipefail
grace=30
while [[ $# -gt 0 ]]; do
  case "$1" in
    --grace=*) grace="${1#*=}"; shift ;;
    --) shift; break ;;
    *) echo "supervise.sh: unknown option '$1'; usage: supervise.sh [--grace=SECONDS] -- command" >&2; exit 2 ;;
  esac
done
[[ $# -gt 0 ]] || { echo "supervise.sh: no command given" >&2; exit 2; }
"$@" &
child=$!
stop() {
  trap '' TERM INT HUP
  kill -TERM "$child" 2>/dev/null || return 0
  ( sleep "$grace"; kill -KILL "$child" 2>/dev/null && echo "supervise.sh: sent SIGKILL to pid $child after ${grace}s" >&2 ) &
}
trap stop TERM INT HUP
while :; do
  wait "$child" 2>/dev/null
  status=$?
  kill -0 "$child" 2>/dev/null || break  # wait also returns when a trapped signal arrives
done
exit "$status"
