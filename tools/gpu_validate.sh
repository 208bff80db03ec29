#!/usr/bin/env bash
# Validate a GPU machine end to end, in one command:
#
#   bash tools/gpu_validate.sh OUTDIR            # a machine with an NVIDIA GPU, nvcc, torch+CUDA
#   bash tools/gpu_validate.sh --self-test OUTDIR  # the script's own machinery on a CPU machine
#
# For a machine with a GPU, a CUDA toolkit, torch, Triton, pytest and pytest-xdist but no network
# (nothing is installed). Steps, each under its own time limit, each logged; a failing step never
# stops the next one:
#   1. build      gradres_fused._C with CUDA, in place, for this GPU's architecture, all cores
#   2. tests      the whole suite on the GPU, one pytest process per test file, pytest-xdist
#                 workers inside it and a per-test timeout: a segfault or hang loses one worker
#                 (xdist names the test it was running and carries on), never the run
#   3. sanitizer  compute-sanitizer memcheck and racecheck over a focused set of cpp CUDA tests
#                 (PyTorch's caching allocator off, so out-of-bounds accesses hit real bounds)
#   4. bench      python -m bench --full (JSON + MD + PNG; exit 1 when parity fails)
#   5. examples   the five experiments in --quick mode (the study: tests/test_study.py)
# OUTDIR gets logs/, junit/, bench/, examples/, summary.txt (one screen, also printed last) and
# summary.json. Exit status: 0 when every step passed, 1 otherwise.
#
# Time: the steps after the build are sized to finish in under 10 minutes on one H100. Override
# with GPU_VALIDATE_TEST_WORKERS, GPU_VALIDATE_TEST_TIMEOUT (per test, s), GPU_VALIDATE_BENCH_ARGS.
set -uo pipefail

self_test=0
if [ "${1:-}" = "--self-test" ]; then self_test=1; shift; fi
out="${1:?usage: tools/gpu_validate.sh [--self-test] OUTDIR}"
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
mkdir -p "$out"/{logs,junit,bench,examples}
out="$(cd "$out" && pwd)"
py="${PYTHON:-python3}"
export PYTHONUNBUFFERED=1 PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
steps_file="$out/steps.tsv"
: > "$steps_file"

# step NAME LIMIT_S CMD... : run CMD with a time limit, log to logs/NAME.log, record rc and time.
step() {
  local name=$1 limit=$2; shift 2
  local t0=$(date +%s)
  echo "== $name (limit ${limit}s): $*" | tee -a "$out/logs/steps.log"
  timeout --signal=TERM --kill-after=20 "$limit" "$@" > "$out/logs/$name.log" 2>&1
  local rc=$?
  local dt=$(( $(date +%s) - t0 ))
  [ $rc -eq 124 ] && echo "TIMEOUT after ${limit}s" >> "$out/logs/$name.log"
  printf '%s\t%s\t%s\n' "$name" "$rc" "$dt" >> "$steps_file"
  echo "   rc=$rc in ${dt}s" | tee -a "$out/logs/steps.log"
  return $rc
}

if [ $self_test = 0 ]; then
  if ! "$py" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "gpu_validate: no CUDA device visible to torch (use --self-test on a CPU machine)" >&2
    exit 2
  fi
fi

# ---- 0. environment ------------------------------------------------------------------------------
{
  date -u +"%Y-%m-%dT%H:%M:%SZ"
  git -C "$root" rev-parse HEAD 2>/dev/null || true
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
  command -v nvcc >/dev/null && nvcc --version | tail -2
  "$py" -c "import sys, torch; print('python', sys.version.split()[0], '| torch', torch.__version__, '| cuda', torch.version.cuda)"
  "$py" -c "import triton; print('triton', triton.__version__)" 2>&1
  echo "cpus $(nproc)"
} > "$out/logs/env.txt" 2>&1

# ---- 1. build ------------------------------------------------------------------------------------
if [ $self_test = 0 ]; then
  arch=$("$py" -c "import torch; print('%d.%d' % torch.cuda.get_device_capability())")
  TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-$arch}" MAX_JOBS="$(nproc)" FORCE_CUDA=1 \
    step build 900 "$py" setup.py build_ext --inplace
  step build_check 120 "$py" -c "
import gradres_fused, gradres_fused.cpp as c
assert c.IMPORT_ERROR is None, c.IMPORT_ERROR
assert c.built_with_cuda(), 'gradres_fused._C has no CUDA kernels'
print('cpp backend built with CUDA; backends on cuda:', gradres_fused.available_backends('cuda'))"
fi

# ---- 2. tests ------------------------------------------------------------------------------------
workers="${GPU_VALIDATE_TEST_WORKERS:-$(( $(nproc) < 8 ? $(nproc) : 8 ))}"
per_test="${GPU_VALIDATE_TEST_TIMEOUT:-300}"
timeout_opt=()
"$py" -c "import pytest_timeout" 2>/dev/null && timeout_opt=(--timeout "$per_test")
xdist_opt=()
"$py" -c "import xdist" 2>/dev/null && xdist_opt=(-n "$workers" --max-worker-restart 100)
if [ $self_test = 1 ]; then
  test_files=(tests/test_activations.py)
  xdist_opt=()
else
  test_files=(tests/test_*.py)
fi
for f in "${test_files[@]}"; do
  name="test_$(basename "$f" .py | sed 's/^test_//')"
  step "$name" 900 "$py" -m pytest "$f" -q -rfE -p no:cacheprovider "${xdist_opt[@]}" \
    "${timeout_opt[@]}" -o faulthandler_timeout="$per_test" --junitxml="$out/junit/$name.xml"
done

# ---- 3. compute-sanitizer ------------------------------------------------------------------------
if [ $self_test = 0 ]; then
  if command -v compute-sanitizer >/dev/null; then
    # Every fused CUDA kernel: both families, a smooth and a piecewise activation, both modes,
    # a full and a half precision (vector and scalar paths, warp- and block-per-row rows).
    focus='test_cuda and (mlp or conv) and (relu or silu) and (f32 or bf16)'
    for tool in memcheck racecheck; do
      extra=()
      [ $tool = memcheck ] && extra=(--leak-check full)
      PYTORCH_NO_CUDA_MEMORY_CACHING=1 step "sanitizer_$tool" 420 \
        compute-sanitizer --tool $tool "${extra[@]}" --error-exitcode 99 \
        --kernel-name kns=gradres \
        "$py" -m pytest tests/test_cpp.py -q -p no:cacheprovider -k "$focus"
    done
  else
    printf 'sanitizer\t127\t0\n' >> "$steps_file"
    echo "compute-sanitizer not found" > "$out/logs/sanitizer.log"
  fi
fi

# ---- 4. bench ------------------------------------------------------------------------------------
stamp="$("$py" -c "
import torch, datetime, bench.__main__ as b
dev = torch.device('cuda' if torch.cuda.is_available() else 'cpu')
print(b.device_name(dev) + '-' + datetime.date.today().strftime('%Y%m%d'))")"
if [ $self_test = 1 ]; then bench_args="${GPU_VALIDATE_BENCH_ARGS:---quick}"; else bench_args="${GPU_VALIDATE_BENCH_ARGS:---full}"; fi
# shellcheck disable=SC2086
step bench 480 "$py" -m bench $bench_args --out "$out/bench/$stamp.json"

# ---- 5. examples (quick) -------------------------------------------------------------------------
for exp in highfreq spectral sr digits batchstats; do
  step "example_$exp" 180 "$py" -m examples.$exp --quick --out "$out/examples" \
    --json "$out/examples/$exp-cli.json"
done

# ---- summary -------------------------------------------------------------------------------------
"$py" "$root/tools/validate_summary.py" "$out"
