#!/usr/bin/env bash
# Train and evaluate on this machine (all its local devices).
#   launch/local.sh CONFIG WORKDIR [--config.key=value ...]
#   launch/local.sh configs/muscall.py:demo runs/demo --config.train.batch_size=64
# Re-running the same command resumes training from WORKDIR's last checkpoint.
# PROCESSES=N runs training as N cooperating processes (a rehearsal of a multi-host job: each reads
# its own share of every batch; process 0 logs), e.g. PROCESSES=2 on one GPU-less machine.
set -euo pipefail
if [ $# -lt 2 ]; then
  sed -n '3,4p' "$0" | sed 's/^# *//' >&2
  exit 2
fi
config=$1 workdir=$2
shift 2
cd "$(dirname "$0")/.."
python=${PYTHON:-.venv/bin/python}
processes=${PROCESSES:-1}
if [ "$processes" -gt 1 ]; then
  export JAX_COORDINATOR_ADDRESS=localhost:${PORT:-12355} JAX_NUM_PROCESSES=$processes
  pids=()
  for ((i = 0; i < processes; i++)); do
    JAX_PROCESS_ID=$i "$python" -m mclap.train --config "$config" --workdir "$workdir" "$@" &
    pids+=($!)
  done
  for pid in "${pids[@]}"; do wait "$pid"; done
  unset JAX_COORDINATOR_ADDRESS JAX_NUM_PROCESSES
else
  "$python" -m mclap.train --config "$config" --workdir "$workdir" "$@"
fi
"$python" -m mclap.eval --config "$config" --workdir "$workdir" --best "$@"
