"""The GPU resource budget (issue #32), checked without a GPU by bench/static.py: every kernel
either backend launches on the representative workloads — compiled for sm_80 and sm_90 as the
JIT / nvcc would, through ptxas — has no register spills and at least 8 resident warps per SM,
the big workloads' memory-bound kernels fill the GPU (≥ 2 waves, or as parallel as the tensors
allow), and the fused MLP backward's persistent grid has ≥ 2 programs per SM.

The budget test needs the GPU image's toolchain (Triton 3.6 with its ptxas, the pip CUDA 13.0
nvcc): the CUDA venv of tools/build_cuda.sh, found at $GRADRES_STATIC_PYTHON or
$GRADRES_CUDA_VENV/bin/python (default ~/.cache/gradres_fused/cuda-venv). Without it the test
skips, unless GRADRES_STATIC_REQUIRED=1 (CI) makes that a failure. The CI subset (bench.static
--ci: every workload and mode; gelu; float32 IEEE, TF32, bf16): 142 Triton compiles (each
distinct specialisation once, fresh cache) and one nvcc build of csrc/cuda/stages.cu per arch.
GRADRES_STATIC_FULL=1: the report's set (relu, silu, gelu × every dtype; 352 compiles).
Measured on this 2-core box (shared): 148 s for this file with a fresh Triton cache.
The rest of this file checks the occupancy arithmetic and the budget's own logic (any Python)."""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench import static  # noqa: E402  (stdlib-only at import)


def _toolchain_python():
    explicit = os.environ.get("GRADRES_STATIC_PYTHON")
    if explicit:
        return explicit
    venv = os.environ.get("GRADRES_CUDA_VENV",
                          os.path.expanduser("~/.cache/gradres_fused/cuda-venv"))
    return os.path.join(venv, "bin", "python")


def _has_toolchain(python):
    if not os.path.exists(python):
        return False
    probe = ("import triton, nvidia, os; from triton.backends.nvidia.compiler import get_ptxas; "
             "get_ptxas(90); assert os.path.exists(os.path.join(list(nvidia.__path__)[0], "
             "'cu13', 'bin', 'nvcc'))")
    return subprocess.run([python, "-c", probe], capture_output=True).returncode == 0


def test_occupancy_arithmetic():
    h100 = static.GPUS[90]
    # 255 registers × 4 warps: 8,192 registers a warp → 8 warps → 2 blocks.
    assert static.occupancy(h100, 255, 4, 40_000) == {"blocks_per_sm": 2, "warps_per_sm": 8,
                                                      "limiter": "registers"}
    # 255 registers × 8 warps: one block, 8 warps (the budget's floor, exactly).
    assert static.occupancy(h100, 255, 8, 0)["warps_per_sm"] == 8
    # 32 registers, 4 warps: the 2,048-thread limit, 16 blocks.
    assert static.occupancy(h100, 32, 4, 0)["blocks_per_sm"] == 16
    # shared memory: 100 KB blocks (+1 KiB reserved) → 2 on an H100 (228 KB), 1 on an A100.
    assert static.occupancy(h100, 64, 4, 100_000)["blocks_per_sm"] == 2
    assert static.occupancy(static.GPUS[80], 64, 4, 100_000)["blocks_per_sm"] == 1


def _row(**kw):
    base = dict(capability=90, kernel="k", config="", regs=64, num_warps=4, shared=0,
                spill_stores=0, spill_loads=0, warps_per_sm=64, blocks_per_sm=16,
                limiter="threads", programs=10_000, waves=4.0, bytes=1 << 26, big=True,
                memory_bound=True)
    return dict(base, **kw)


def test_budget_flags_spills_occupancy_and_small_grids():
    assert static.check([_row()], []) == []
    assert "spill" in static.check([_row(spill_stores=4)], [])[0]
    assert "resident warps" in static.check([_row(warps_per_sm=4)], [])[0]
    # 144 programs over a 64 MB pass (the old conv z̄ grid): too few.
    assert "waves" in static.check([_row(programs=144, waves=0.07)], [])[0]
    # … but not when each thread already has ≤ 128 B, nor for a small or a compute-bound kernel.
    assert static.check([_row(programs=144, waves=0.07, bytes=144 * 128 * 100)], []) == []
    assert static.check([_row(programs=1, waves=0.001, bytes=1000)], []) == []
    assert static.check([_row(programs=144, waves=0.07, memory_bound=False)], []) == []
    # the fused backward's persistent grid: ≥ 2 programs per SM
    bwd = dict(_row(kernel="mlp_fused_bwd_kernel", memory_bound=False), workload="w",
               dtype="bf16", activation="relu", mode="detach")
    assert static.check([dict(bwd, programs=132)], [])
    assert static.check([dict(bwd, programs=264)], []) == []
    # CUDA-extension launches are held to the same budget
    assert static.check([], [_row(backend="cpp", spill_loads=8)])


@pytest.fixture(scope="module")
def static_run():
    """One run of bench.static over the --ci subset (both archs), shared by the backends' tests."""
    python = _toolchain_python()
    if not _has_toolchain(python):
        if os.environ.get("GRADRES_STATIC_REQUIRED") == "1":
            pytest.fail(f"GRADRES_STATIC_REQUIRED=1 but {python} lacks Triton's ptxas or the "
                        "CUDA 13 nvcc (run tools/build_cuda.sh first)")
        pytest.skip(f"no GPU toolchain at {python} (tools/build_cuda.sh makes it)")
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "GRADRES_AUTOTUNE")}
    # A fresh Triton cache unless GRADRES_STATIC_CACHE names one to keep between runs (Triton's
    # cache is keyed on the kernel source, the specialisation and the compiler).
    cache = os.environ.get("GRADRES_STATIC_CACHE") or tempfile.mkdtemp(prefix="gradres-static-")
    env.update(TRITON_CACHE_DIR=cache, OMP_NUM_THREADS="1")
    args = [python, "-m", "bench.static", "--arch", "80", "90", "--no-write", "--no-model"]
    if os.environ.get("GRADRES_STATIC_FULL") != "1":
        args.append("--ci")
    proc = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=3600)
    breaches = [line[len("BREACH "):] for line in proc.stdout.splitlines()
                if line.startswith("BREACH ")]
    # exit status 1 = breaches found (reported per backend below); anything else is a crash
    assert proc.returncode in (0, 1) and (proc.returncode == 0) == (not breaches), \
        proc.stderr[-4000:]
    return breaches


@pytest.mark.parametrize("backend", ["triton", "cpp"])
def test_launch_budget(static_run, backend):
    """Every kernel `backend` launches on the --ci subset is within the budget; the message lists
    each breach with its kernel, config, workload and figures."""
    mine = [b for b in static_run if b.startswith(backend + " ")]
    assert not mine, f"{len(mine)} budget breaches:\n" + "\n".join(mine[:60])
