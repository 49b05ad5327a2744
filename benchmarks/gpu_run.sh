#!/usr/bin/env bash
# The device run behind benchmarks/results/gpu_check.md, on a GPU machine with JAX and PyTorch but no
# TensorFlow: Keras (and its pure-Python needs) from wheels in .whl/, this checkout on PYTHONPATH with its
# pytest11 entry point registered, then gpu_check.py and the GPU-relevant backend tests (test_fit.py holds the per-step-sync check: the logs are converted once a chunk, never per step; test_jax_row_sums.py the block sums, whose matrix product must not round to TF32) under JAX and PyTorch.
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD
d=/tmp/site/pytest_stability-0.0.dist-info
mkdir -p "$d"
printf 'Metadata-Version: 2.1\nName: pytest-stability\nVersion: 0.0\n' > "$d/METADATA"
printf '[pytest11]\nstability = pytest_stability.plugin\n' > "$d/entry_points.txt"
nvidia-smi -L
BACKENDS=${BACKENDS:-jax,torch}  # BACKENDS=torch bash benchmarks/gpu_run.sh: one backend
# BENCH=0 bash benchmarks/gpu_run.sh: the tests only, not gpu_check.py (the example project and the benchmarks)
if [ "${BENCH:-1}" != 0 ]; then
  python3 benchmarks/gpu_check.py --out "${OUT:-/tmp/gpu_out}" --reps 3 --backends "$BACKENDS" --timeout 300
fi
# TESTS="..." bash benchmarks/gpu_run.sh: other test files (test_fidelity.py: the differential checks on the GPU)
TESTS=${TESTS:-tests/backends/test_fit.py tests/backends/test_curvature_hvp.py tests/backends/test_replay.py tests/backends/test_jax_row_sums.py}
for b in ${BACKENDS//,/ }; do
  echo "== $TESTS on the GPU, KERAS_BACKEND=$b"
  KERAS_BACKEND=$b timeout ${TESTS_TIMEOUT:-150} python3 -m pytest $TESTS -rs -q -p no:cacheprovider --durations=5 2>&1 | tail -25
done
