#!/usr/bin/env bash
# meshlm's front door: sets up .venv when needed, then runs a job.
#
#   ./launch.sh demo                 train configs/bert_tiny.py on the built-in corpus, fill masks, show the curve
#   ./launch.sh test [pytest args]   install the test, hf and eval extras and run the test suite
#   ./launch.sh train [flags]        python -m train.main with these flags
#   ./launch.sh COMMAND [flags]      evaluate, checkpoints, curve, decode, fill_mask, export, import_hf,
#                                    finetune, sft, predict, prepare, build_tfds, write_task, lm_eval:
#                                    each is python -m of its module (README, "Layout")
#   ./launch.sh run MODULE [flags]   python -m MODULE with these flags (any module with a main)
#   ./launch.sh local --processes=N [--grace=S] [--dry-run] -- [train flags]   N processes on this machine, one job
#   ./launch.sh tpu --name=NAME --zone=ZONE [--project=P] [--grace=S] [--dry-run] -- [train flags]   a Cloud TPU pod
#   ./launch.sh slurm [--nodes=N --gpus_per_node=G ...] [--grace=S] [--dry-run] -- [train flags]   sbatch + srun
#   (--grace: seconds between the SIGTERM that stops a job's processes and the SIGKILL, default 30)
#
# Environment: PYTHON (interpreter to build .venv from, default python3; when python3 is older
# than 3.11, as on stock Cloud TPU VM images, uv makes .venv with a managed Python
# MESHLM_PYTHON_VERSION, default 3.11),
# MESHLM_VENV (default .venv), WORKDIR (demo's workdir, default workdirs/demo),
# MESHLM_EXTRAS (extra pyproject extras to install, e.g. tpu or cuda).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$ROOT"
VENV="${MESHLM_VENV:-$ROOT/.venv}"
PY="$VENV/bin/python"

die() { echo "launch.sh: $*" >&2; exit 2; }

file_hash() { if command -v sha256sum >/dev/null; then sha256sum "$1"; else shasum -a 256 "$1"; fi | cut -d' ' -f1; }

# Creates the venv and installs pyproject's dependencies (plus extras) unless the stamp
# says this exact pyproject.toml and extras set are already installed.
ensure_venv() {
  local extras="$1${MESHLM_EXTRAS:+,$MESHLM_EXTRAS}"
  extras="${extras#,}"
  local hash want
  hash="$(file_hash pyproject.toml)"
  want="$hash extras=[$extras]"
  if [[ -f "$VENV/.meshlm-stamp" ]] && grep -qxF "$want" "$VENV/.meshlm-stamp"; then
    return 0
  fi
  [[ -x "$PY" ]] || create_venv
  local uv
  uv="$(find_uv "$PY")"
  echo "launch.sh: installing dependencies (extras: ${extras:-none})"
  local extra_args=()
  local e
  for e in ${extras//,/ }; do extra_args+=(--extra "$e"); done
  # .pyc files matter: imports are 2x slower without them and PYTHONDONTWRITEBYTECODE may be set.
  # Local wheel folders (PIP_FIND_LINKS: the CPU torch wheel here) are offered to uv as well.
  local link
  for link in ${PIP_FIND_LINKS:-}; do extra_args+=(--find-links "$link"); done
  "$uv" pip install -q --python "$PY" --compile-bytecode -r pyproject.toml ${extra_args[@]+"${extra_args[@]}"}
  # One stamp line per extras set installed from this pyproject, so `demo` after `test`
  # does not reinstall; lines of an older pyproject are dropped.
  { grep "^$hash " "$VENV/.meshlm-stamp" 2>/dev/null | grep -vxF "$want" || true
    echo "$want"; } >"$VENV/.meshlm-stamp.new"
  mv "$VENV/.meshlm-stamp.new" "$VENV/.meshlm-stamp"
}

# Makes $VENV from $PYTHON (default python3) when that is 3.11+. An older python3 (the stock
# Cloud TPU VM images have 3.10) or none: uv makes the venv with a Python $MESHLM_PYTHON_VERSION
# (default 3.11) it finds on this machine or downloads (a uv-managed CPython, ~/.local/share/uv).
create_venv() {
  local base="${PYTHON:-python3}"
  if command -v "$base" >/dev/null && "$base" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    echo "launch.sh: creating $VENV"
    "$base" -m venv "$VENV"
    return 0
  fi
  [[ -z "${PYTHON:-}" ]] || die "PYTHON=$PYTHON is $("$PYTHON" --version 2>&1 || echo 'not runnable'); meshlm needs Python 3.11+ (or unset PYTHON: launch.sh then makes the venv with a uv-managed Python)"
  local version="${MESHLM_PYTHON_VERSION:-3.11}" have
  have="$(python3 --version 2>&1 || echo 'no python3')"
  echo "launch.sh: $have is older than 3.11; creating $VENV with Python $version through uv"
  local uv
  uv="$(find_uv python3)"
  "$uv" venv -q --python "$version" "$VENV" ||
    die "uv could not make a Python $version venv; install Python 3.11+ and set PYTHON=/path/to/python3.11"
}

# The uv that installs into the venv: the venv's own, one on PATH, else one pip installs
# (into the venv when it has pip, else into .cache/uv for the Python it is given).
find_uv() {
  local python="$1" boot="$ROOT/.cache/uv"
  if [[ -x "$VENV/bin/uv" ]]; then echo "$VENV/bin/uv"; return 0; fi
  if command -v uv >/dev/null; then command -v uv; return 0; fi
  if [[ -x "$boot/bin/uv" ]]; then echo "$boot/bin/uv"; return 0; fi
  if [[ "$python" == "$PY" ]]; then
    "$PY" -m pip install -q --disable-pip-version-check uv >&2 && { echo "$VENV/bin/uv"; return 0; }
  fi
  "$python" -m pip install -q --disable-pip-version-check --target "$boot" uv >&2 ||
    die "no uv, and '$python -m pip install uv' failed; install uv (python3 -m pip install --user uv, or apt-get install python3-pip first)"
  echo "$boot/bin/uv"
}

# Compiled XLA programs are cached across runs: reruns and the test suite start faster.
export JAX_COMPILATION_CACHE_DIR="${JAX_COMPILATION_CACHE_DIR:-$ROOT/.cache/jax}"
export JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="${JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS:-0}"
export JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="${JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES:-0}"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"

# XLA:CPU takes each step's scratch from malloc (1.6 GB for a BERT-base step at batch 8).
# glibc maps blocks that large fresh and unmaps them on free, so every step faults its
# scratch in again, 4 KiB at a time: 400k page faults, ~11% of the step. glibc's hugetlb
# tunable has malloc ask for transparent huge pages (where the kernel allows them: THP
# "madvise" or "always"), 2 MiB a fault. Your own GLIBC_TUNABLES or LD_PRELOAD (e.g.
# tcmalloc) is left as it is.
[[ -n "${GLIBC_TUNABLES:-}" || -n "${LD_PRELOAD:-}" ]] || export GLIBC_TUNABLES=glibc.malloc.hugetlb=1

# The commands, each a module's main (a package's __main__.py or a *_cli.py module).
command_module() {
  case "$1" in
    train) echo train.main ;;
    evaluate) echo train.evaluate ;;
    lm_eval) echo train.evaluate.lm_eval_cli ;;
    checkpoints) echo train.checkpoints ;;
    curve) echo train.evaluate.curve_cli ;;
    decode) echo train.generate.decode_cli ;;
    fill_mask) echo train.generate.fill_mask_cli ;;
    export) echo train.interop.export_cli ;;
    import_hf) echo train.interop.import_cli ;;
    finetune) echo train.finetune ;;
    sft) echo train.finetune.sft_cli ;;
    predict) echo train.finetune.predict_cli ;;
    prepare) echo data.prepare_cli ;;
    build_tfds) echo data.build_tfds_cli ;;
    write_task) echo data.write_task_cli ;;
    *) return 1 ;;
  esac
}

# shellcheck source=scripts/multihost.sh
source "$ROOT/scripts/multihost.sh"

cmd="${1:-}"
[[ $# -gt 0 ]] && shift
case "$cmd" in
  demo)
    ensure_venv ""
    workdir="${WORKDIR:-$ROOT/workdirs/demo}"
    "$PY" -m train.main --config=configs/bert_tiny.py --workdir="$workdir" "$@"
    "$PY" -m "$(command_module fill_mask)" --workdir="$workdir" --examples=5 --candidates=5
    "$PY" -m "$(command_module curve)" --workdir="$workdir"
    ;;
  test)
    ensure_venv "test,hf,eval"
    # One worker process per core (at most 4), each test file on one worker so that its fixtures
    # are built once; MESHLM_TEST_WORKERS=0 runs in this process. Later -n/--dist flags win.
    workers="${MESHLM_TEST_WORKERS:-$(( $(nproc) < 4 ? $(nproc) : 4 ))}"
    "$PY" -m pytest -n "$workers" --dist loadfile "$@"
    ;;
  train)
    ensure_venv ""
    exec "$PY" -m train.main "$@"
    ;;
  run)
    [[ $# -gt 0 ]] || die "usage: ./launch.sh run MODULE [flags]"
    ensure_venv ""
    module="$1"; shift
    exec "$PY" -m "$module" "$@"
    ;;
  lm_eval)
    ensure_venv "eval"
    exec "$PY" -m "$(command_module "$cmd")" "$@"
    ;;
  evaluate)
    # Task scores (--tasks) run lm-evaluation-harness: the eval extra.
    extras=""
    for arg in "$@"; do [[ "$arg" == --tasks* ]] && extras="eval"; done
    ensure_venv "$extras"
    exec "$PY" -m "$(command_module "$cmd")" "$@"
    ;;
  checkpoints|curve|decode|fill_mask|export|import_hf|finetune|sft|predict|prepare|build_tfds|write_task)
    ensure_venv ""
    exec "$PY" -m "$(command_module "$cmd")" "$@"
    ;;
  local) launch_local "$@" ;;
  tpu) launch_tpu "$@" ;;
  slurm) launch_slurm "$@" ;;
  ""|-h|--help|help)
    awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "$0"
    ;;
  *)
    die "unknown command '$cmd'; accepted: demo, test, train, evaluate, lm_eval, checkpoints, curve, decode, fill_mask, export, import_hf, finetune, sft, predict, prepare, build_tfds, write_task, run, local, tpu, slurm (see ./launch.sh --help)"
    ;;
esac
