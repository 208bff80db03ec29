#!/usr/bin/env bash
# Build gradres_fused._C WITH CUDA on a machine that has no GPU, exactly as CI does, and check it.
#
#   bash tools/build_cuda.sh [--test] [--static] [--report]
#
# 1. A separate virtual environment (never the one the README's commands use), kept between runs
#    at $GRADRES_CUDA_VENV (default ~/.cache/gradres_fused/cuda-venv), with the CUDA build of
#    torch and CUDA's compiler from pip, pinned to that torch's CUDA minor (13.0): an unpinned
#    nvidia-nvvm (13.5) emits PTX that ptxas 13.0 rejects. The toolkit lives in the wheels'
#    nvidia/cu13 folder, which becomes CUDA_HOME (a system nvcc toolkit lacks the cuSPARSE/cuBLAS
#    headers that ATen's CUDA headers include).
# 2. The project's own setup.py builds the extension for sm_80 and sm_90 in a scratch copy of the
#    tracked sources (the repository's own gradres_fused/_C*.so stays the CPU build).
# 3. The result must load, report the CUDA kernels registered for every op, and (--test) pass
#    tests/test_cpp.py on CPU against that binary.
# 4. --static: the GPU resource budget (tests/test_gpu_static.py, bench.static --ci: every kernel
#    either backend launches on the representative workloads, compiled for sm_80 and sm_90
#    through ptxas, without spills, ≥ 8 warps per SM, grids that fill the GPU); ~6–8 min on two
#    cores. --report: regenerate bench/results/gpu-static-sm{80,90}.{md,json} in this checkout
#    (every activation and dtype, plus the paper model of GPU time; ~15 min on two cores with a
#    cold Triton cache).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
venv="${GRADRES_CUDA_VENV:-$HOME/.cache/gradres_fused/cuda-venv}"
archs="${TORCH_CUDA_ARCH_LIST:-8.0;9.0+PTX}"
run_tests=0 run_static=0 run_report=0
for arg in "$@"; do
  case "$arg" in
    --test) run_tests=1 ;;
    --static) run_static=1 ;;
    --report) run_report=1 ;;
    *) echo "build_cuda: unknown argument $arg (expected --test, --static, --report)"; exit 2 ;;
  esac
done
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1

TORCH_PIN="torch==2.11.0"  # the GPU image's torch; its Linux wheel is the CUDA 13.0 build
NVCC_PINS="nvidia-cuda-nvcc==13.0.88 nvidia-cuda-cccl==13.0.85 nvidia-cuda-crt==13.0.88 nvidia-nvvm==13.0.88"
stamp="$venv/.gradres-pins"
want="$TORCH_PIN $NVCC_PINS ninja setuptools wheel pytest hypothesis numpy"
if [ ! -x "$venv/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "build_cuda: preparing $venv (first run downloads ~3 GB)"
  python3 -m venv "$venv"
  # The machine's pip configuration may prefer a local CPU wheel of torch: ask the registry directly.
  PIP_CONFIG_FILE=/dev/null "$venv/bin/pip" install -q "$TORCH_PIN"
  "$venv/bin/pip" install -q $NVCC_PINS ninja setuptools wheel pytest hypothesis numpy
  echo "$want" > "$stamp"
fi
py="$venv/bin/python"
cuda_home="$("$py" -c 'import nvidia, os; print(os.path.join(list(nvidia.__path__)[0], "cu13"))')"
# The wheel ships libcudart.so.13 only; the link step asks for libcudart.so.
[ -e "$cuda_home/lib/libcudart.so" ] || ln -s libcudart.so.13 "$cuda_home/lib/libcudart.so"
export CUDA_HOME="$cuda_home" PATH="$cuda_home/bin:$PATH" TORCH_CUDA_ARCH_LIST="$archs"
export MAX_JOBS="${MAX_JOBS:-$(nproc)}"

work="${GRADRES_CUDA_BUILD_DIR:-$(mktemp -d /tmp/gradres-cuda-build.XXXXXX)}"
rm -rf "$work/src" && mkdir -p "$work/src"
(cd "$root" && git ls-files -z --cached --others --exclude-standard | xargs -0 cp --parents -t "$work/src")
cd "$work/src"
echo "build_cuda: torch $("$py" -c 'import torch; print(torch.__version__)'), nvcc $("$cuda_home/bin/nvcc" --version | tail -2 | head -1), archs $archs, in $work/src"
start=$(date +%s)
"$py" setup.py build_ext --inplace > "$work/build.log" 2>&1 \
  || { tail -n 60 "$work/build.log"; echo "build_cuda: BUILD FAILED (log: $work/build.log)"; exit 1; }
echo "build_cuda: built in $(( $(date +%s) - start )) s: $(ls gradres_fused/_C*.so)"

"$py" - <<'PY'
import torch, gradres_fused
from gradres_fused import cpp
assert cpp.IMPORT_ERROR is None, cpp.IMPORT_ERROR
assert cpp.built_with_cuda(), "gradres_fused._C loaded but has no CUDA kernels"
ops = ["gradres_fused::mlp_fwd", "gradres_fused::mlp_bwd", "gradres_fused::conv_fwd", "gradres_fused::conv_bwd"]
missing = [(op, key) for op in ops for key in ("CPU", "CUDA")
           if not torch._C._dispatch_has_kernel_for_dispatch_key(op, key)]
assert not missing, f"kernels not registered: {missing}"
print("build_cuda: _C loads without a GPU; CPU and CUDA kernels registered for", ", ".join(ops))
PY
if [ "$run_tests" = 1 ]; then
  "$py" -m pytest -q -p no:cacheprovider tests/test_cpp.py
fi
if [ "$run_static" = 1 ]; then
  GRADRES_STATIC_REQUIRED=1 GRADRES_STATIC_PYTHON="$py" \
    "$py" -m pytest -q -p no:cacheprovider tests/test_gpu_static.py
fi
if [ "$run_report" = 1 ]; then
  (cd "$root" && "$py" -m bench.static --arch 80 90)
fi
