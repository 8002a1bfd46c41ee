#!/usr/bin/env bash
# The GPU rows of the README's Performance section, in one short run on a machine with a GPU,
# JAX with CUDA, PyTorch with CUDA and fnn's optional extras (BackPACK, Opacus, dp-accounting,
# mlxtend) installed:
#
#     bash experiments/gpu_benchmarks.sh OUT [REPEATS]
#
# Each stage runs in a process of its own under a time limit, so that one that fails (or a
# JAX release that changed under it) costs only its own rows; every stage's output goes to
# OUT/log.txt and its numbers to OUT/*.json:
#   1. the gradient, training-step, epoch, clipping and DP-SGD rows (experiments/benchmarks.py);
#   2. the precision row (issue 16) twice: with JAX's default float32 matmul precision (which
#      on a GPU with tensor cores may use TF32) and with "highest" (true float32 products);
#   3. fnn.curvature's rows against BackPACK and the brute force (issue 13);
#   4. the core test files on the GPU (gradients, losses, network, per-example, curvature,
#      precision, privacy, worked example), with pytest-xdist when present.
# REPEATS (default 10) is benchmarks.py's --repeats: fewer than the CPU run's 50, because a
# GPU's paired ratios are steadier and a lent GPU's time is short. On an H200 the first four
# stages took 156, 22, 37 and 103 s; the tests, compiling from nothing, were 95% done after
# 170 s with 8 processes (then cut), and took 62 s with 12 once XLA's cache held their programs.
set -u
out=${1:?usage: gpu_benchmarks.sh OUT [REPEATS]}
repeats=${2:-10}
mkdir -p "$out"
log="$out/log.txt"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export XLA_PYTHON_CLIENT_MEM_FRACTION=0.5  # PyTorch shares the GPU in the same process
py=${PYTHON:-python3}

stage() {  # stage NAME SECONDS COMMAND...
    local name=$1 limit=$2
    shift 2
    echo "=== $name ($(date -u +%T), limit ${limit} s)" | tee -a "$log"
    local start=$SECONDS
    timeout "$limit" "$@" 2>&1 | tee -a "$log"
    echo "=== $name: exit ${PIPESTATUS[0]} after $((SECONDS - start)) s" | tee -a "$log"
}

{ nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
  "$py" -c "import jax, torch; print('jax', jax.__version__, jax.devices(), '| torch',
torch.__version__, torch.cuda.is_available())"; } 2>&1 | tee -a "$log"

stage benchmarks 240 "$py" experiments/benchmarks.py --repeats "$repeats" --no-curvature \
    --no-precision --out "$out/main"
precision='import json, sys; sys.path.insert(0, "experiments"); import benchmarks as b
r = b.precision_row(int(sys.argv[1])); print(r["row"], "backend", r["backend"])
print(b.format_precision(r)); json.dump(r, open(sys.argv[2], "w"), indent=2)'
stage "precision (default matmul precision)" 45 "$py" -c "$precision" "$repeats" \
    "$out/precision_default.json"
JAX_DEFAULT_MATMUL_PRECISION=highest stage "precision (highest)" 45 "$py" -c "$precision" \
    "$repeats" "$out/precision_highest.json"
stage curvature 120 "$py" experiments/_bench_curvature.py --repeats "$repeats" --out "$out"
# pytest-benchmark, where installed, warns (an error here) that it is off under xdist.
xdist=$("$py" -c "import xdist" 2>/dev/null && echo "-n 12 -p no:benchmark")
XLA_PYTHON_CLIENT_PREALLOCATE=false stage "core tests on the GPU" 200 "$py" -m pytest -q \
    $xdist -W "default::DeprecationWarning" -p no:cacheprovider --tb=short -rf \
    tests/test_gradients.py \
    tests/test_losses.py tests/test_network.py tests/test_per_example.py \
    tests/test_curvature.py tests/test_precision.py tests/test_privacy.py \
    tests/test_worked_example.py
