#!/usr/bin/env bash
# The GPU check of BENCHMARKS.md, in one run of about 8 minutes on a fresh GPU machine whose image
# has jax, flax, optax, orbax-checkpoint and torch but not mclap's other dependencies, and no network.
#
#   here, with network:  make gpu-check-files      (build/gpu: wheels for Python 3.12, the tokenizer)
#   there:               bash benchmarks/gpu_check.sh   (carry build/gpu; results: JSON lines on stdout
#                                                  and in $OUT/gpu_check.jsonl)
#   dry run on a CPU:    GPU_CHECK_BATCH=4 GPU_CHECK_SCALE=8 GPU_CHECK_STEPS=2 GPU_CHECK_LOOP_STEPS=6 \
#                        GPU_CHECK_DTYPE=float32 bash benchmarks/gpu_check.sh
#
# In order of importance, each part under its own time limit so that a slow one leaves the rest:
# mclap's train step beside the PyTorch MusCALL at the same batch (versus), the step and embedding
# with MFU (model), the real `mclap.train` loop with cold and warm start (loop; the warm one traces
# three steps into $OUT/profile, for TensorBoard's profile tab or ui.perfetto.dev), larger batches
# (with feature caching where one does not fit), and the input pipeline against its worker count.
set -uo pipefail
cd "$(dirname "$0")/.."

FILES=${GPU_CHECK_FILES:-build/gpu}
OUT=${OUT:-build/gpu_check}  # Results only: what comes back from a lent machine is a few small files.
WORK=${GPU_CHECK_WORK:-build/gpu_work}  # Corpora and the compilation cache.
BATCH=${GPU_CHECK_BATCH:-256}
DTYPE=${GPU_CHECK_DTYPE:-bfloat16}
SCALE=${GPU_CHECK_SCALE:-1024 4096}
STEPS=${GPU_CHECK_STEPS:-20}
LOOP_STEPS=${GPU_CHECK_LOOP_STEPS:-300}
WORKERS=${GPU_CHECK_WORKERS:-$(( $(nproc) > 6 ? $(nproc) - 4 : 2 ))}  # Cores left for the main process and the device.
mkdir -p "$OUT" "$WORK"

if [ -d "$FILES/wheels" ] && ! python -c "import grain, array_record, ml_collections, soundfile, soxr" 2>/dev/null; then
  SITE=$(mktemp -d)
  python -m pip install --quiet --no-index --no-deps --target "$SITE" "$FILES"/wheels/*.whl || exit 1
  export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
fi
# bench.py compiles in-process: JAX reads the cache directory from the environment.
export JAX_COMPILATION_CACHE_DIR="$WORK/compilation_cache"

bench() {  # bench SECONDS ARGS...: one bench.py run under a time limit; its rows go to the results.
  local limit=$1
  shift
  timeout "$limit" python benchmarks/bench.py --set "data.tokenizer_dir=$FILES/tokenizer" --cache "$WORK/corpora" \
    --model_configs=configs/muscall.py --dtype="$DTYPE" "$@" | tee -a "$OUT/gpu_check.jsonl"
  local code=${PIPESTATUS[0]}
  [ "$code" -eq 0 ] || echo "{\"bench\": \"failed\", \"args\": \"$*\", \"exit\": $code}" | tee -a "$OUT/gpu_check.jsonl"
  return "$code"
}

python -c "import jax; print('devices:', jax.devices())"
bench 150 --benchmarks=versus --model_batch="$BATCH" --token_buckets=0 --steps="$STEPS" --rounds=2
bench 120 --benchmarks=model --model_batch="$BATCH" --token_buckets=0,16 --steps="$STEPS"
bench 200 --benchmarks=loop --model_batch="$BATCH" --loop_steps="$LOOP_STEPS" --workers="$WORKERS" \
  --profile_dir="$OUT/profile" --profile_steps=3
gzip -f "$OUT"/profile/*.xplane.pb 2>/dev/null  # TensorBoard's trace, for the profile tab; Perfetto's is gzipped.
for batch in $SCALE; do
  bench 120 --benchmarks=model --model_batch="$batch" --token_buckets=16 --steps=5 \
    || bench 120 --benchmarks=model --model_batch="$batch" --token_buckets=16 --steps=5 --sub_batches=4
done
bench 120 --benchmarks=input --configs=configs/muscall.py --workers="0,4,$WORKERS" --batches=10
