#!/usr/bin/env bash
# Train and evaluate on this machine (all its local devices).
#   launch/local.sh CONFIG WORKDIR [--config.key=value ...]
#   launch/local.sh configs/muscall.py:demo runs/demo --config.train.batch_size=64
# Re-running the same command resumes training from WORKDIR's last checkpoint.
set -euo pipefail
if [ $# -lt 2 ]; then
  sed -n '3,4p' "$0" | sed 's/^# *//' >&2
  exit 2
fi
config=$1 workdir=$2
shift 2
cd "$(dirname "$0")/.."
python=${PYTHON:-.venv/bin/python}
"$python" -m mclap.train --config "$config" --workdir "$workdir" "$@"
"$python" -m mclap.eval --config "$config" --workdir "$workdir" --best "$@"
