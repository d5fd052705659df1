#!/bin/bash
# The GPU benchmark as one script (benchmarks/gpu_step.py, every model, both frameworks).
#
#   benchmarks/gpu_run.sh prepare   # here, with internet: the wheels the GPU machine lacks, in .whl/
#   benchmarks/gpu_run.sh           # on the GPU machine: install them, run, JSON and log to $OUT
#
# The device tool's machines have JAX with CUDA, flax, optax, orbax, torch and absl but neither
# TensorFlow nor ml-collections and pydicom, which mammo_jax's configs and tfds_cbis's plain
# modules import; those two pure-Python wheels travel in .whl/ (git-ignored; name it in the
# run's carry). Everything runs in one process within about 8 minutes on an H100; the JSON is
# rewritten after every row, so a run stopped at its limit keeps what it timed.
set -uo pipefail
cd "$(dirname "$0")/.."
WHEELS=(ml-collections==1.1.0 pydicom==3.0.2)

if [ "${1:-}" = prepare ]; then
  exec "${PYTHON:-python3}" -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux2014_x86_64 -d .whl "${WHEELS[@]}"
fi

OUT=${OUT:-benchmarks/results}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1
# JAX and PyTorch share the GPU in one process: JAX takes half, not its default 75 %.
export XLA_PYTHON_CLIENT_MEM_FRACTION=0.5
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv | tee "$OUT/nvidia_smi.txt"
python3 -c 'import sys, jax, flax, optax, torch; print("python", sys.version.split()[0], "jax",
  jax.__version__, "flax", flax.__version__, "optax", optax.__version__, "torch",
  torch.__version__, jax.devices())' 2>&1 | tee "$OUT/versions.txt"
# GPU_STEP_SECONDS bounds the train-step rows; the host-overhead rows (a tiny model) follow.
timeout "${GPU_STEP_SECONDS:-480}" python3 benchmarks/gpu_step.py --platform gpu \
  --out "$OUT/gpu_step.json" "$@" 2>&1 | tee "$OUT/gpu_step.log"
timeout 60 python3 benchmarks/gpu_step.py --platform gpu --host_overhead \
  --out "$OUT/gpu_host_overhead.json" 2>&1 | tail -30 | tee "$OUT/gpu_host_overhead.log"
