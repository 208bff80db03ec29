"""Static GPU report: what a GPU would execute, read without one.

    <cuda-venv>/bin/python -m bench.static [--arch 80 90] [--ci] [--no-write] [--no-model]

For representative workloads (narrow MLP N = 65536 with D = H ∈ {32, 64, 128}, the bench's wide
MLP, EDSR conv blocks 16×64×48×48 and 2×64×32×32; relu, silu, gelu; detach and second order;
float32 with IEEE and with TF32 dots, float16, bfloat16) it runs the project's own launch code:

- Triton (backend `triton`): gradres_fused.triton_backend's forward and backward
  implementations — the launch policy, the path choice, every grid lambda — on CPU tensors behind
  a stub Triton driver reporting an sm_80 or sm_90 target and that GPU's properties. Each
  `kernel[grid](...)` launch is recorded instead of executed, with the grid the launch code
  computed and the exact specialisation the JIT would compile at run time; each distinct
  specialisation is then compiled (the GPU image's Triton 3.6) all the way through ptxas, whose
  report gives registers, spill stores / loads and stack; Triton's metadata the shared memory.
- CUDA extension (backend `cpp`): csrc/cuda/stages.cu, compiled with setup.py's nvcc flags and
  `-Xptxas -v` and linked with bench/cuda_launch_probe.cpp against a stub CUDA runtime, runs
  the extension's own launchers on each stage call of a training step (the sequence mirrors
  csrc/blocks.h): grid and block of every launch, registers and spills of every kernel.

Occupancy: resident blocks per SM limited by registers, threads, shared memory and the 32-block
cap; resident warps per SM; waves = grid ÷ (blocks per SM × SMs). The budget (BUDGET, `check`) is
asserted by tests/test_gpu_static.py over the --ci subset.

Also, labelled as a model: a paper estimate of GPU time per training step (each kernel's
compulsory bytes and FLOPs against an H100 SXM roofline plus a fixed cost per launch) for the
triton backend, `composite` and the plain residual block, and their ratios.

Output: bench/results/gpu-static-sm{80,90}.{md,json}. Nothing here is a measurement of time.
Needs the CUDA venv of tools/build_cuda.sh (Triton 3.6 with ptxas, the pip CUDA 13.0 nvcc).
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import io
import json
import os
import re
import subprocess
import sys
import time
from typing import Dict, List, Optional, Tuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# ---- the GPUs ------------------------------------------------------------------------------------
# Per-SM limits (CUDA programming guide, "Technical specifications per compute capability").
# shared_sm: shared memory per SM usable by blocks; every block also takes 1 KiB reserved by
# the runtime (cudaDevAttrReservedSharedMemoryPerBlock).


@dataclasses.dataclass(frozen=True)
class Gpu:
    capability: int
    name: str
    sm_count: int
    shared_block: int  # opt-in shared memory per block
    shared_sm: int
    regs_sm: int = 65536
    threads_sm: int = 2048
    blocks_sm: int = 32
    reserved_shared: int = 1024


GPUS = {80: Gpu(80, "A100 SXM (sm_80, 108 SMs)", 108, 166_912, 167_936),
        90: Gpu(90, "H100 SXM (sm_90, 132 SMs)", 132, 232_448, 233_472)}


def occupancy(gpu: Gpu, regs: int, warps: int, shared: int) -> Dict[str, int]:
    """Resident blocks and warps per SM of a kernel with `regs` registers per thread, `warps`
    warps per block and `shared` bytes of shared memory per block (register allocation: per warp,
    in units of 256 registers, of regs rounded up to 8 per thread)."""
    per_warp = -(-max(regs, 1) * 32 // 256) * 256
    by_regs = (gpu.regs_sm // per_warp) // warps
    by_threads = gpu.threads_sm // (32 * warps)
    by_shared = gpu.shared_sm // (shared + gpu.reserved_shared)
    blocks = min(by_regs, by_threads, by_shared, gpu.blocks_sm)
    limiter = min((("registers", by_regs), ("threads", by_threads), ("shared", by_shared),
                   ("blocks", gpu.blocks_sm)), key=lambda kv: kv[1])[0]
    return {"blocks_per_sm": blocks, "warps_per_sm": blocks * warps, "limiter": limiter}


# ---- the budget ------------------------------------------------------------------------------------
# Enforced on every kernel either backend launches (tests/test_gpu_static.py).
BUDGET = {
    "spill_bytes": 0,           # spill stores + spill loads per thread, every kernel
    "min_warps_per_sm": 8,      # resident warps per SM, every kernel
    "min_waves": 2.0,           # memory-bound kernels on the big workloads, unless …
    "max_bytes_per_thread": 128,  # … the grid already gives each thread ≤ 8 16-byte vectors
}

# ---- workloads -------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Workload:
    name: str
    family: str   # "mlp" or "conv"
    shape: Tuple[int, ...]  # mlp: (N, D, H); conv: (N, C, Cm, H, W, k)
    big: bool     # the waves floor applies to its memory-bound kernels
    what: str


WORKLOADS = (
    Workload("mlp_narrow32", "mlp", (65536, 32, 32), True, "narrow MLP N=65536, D=H=32"),
    Workload("mlp_narrow64", "mlp", (65536, 64, 64), True, "narrow MLP N=65536, D=H=64 (bench)"),
    Workload("mlp_narrow128", "mlp", (65536, 128, 128), True, "narrow MLP N=65536, D=H=128"),
    Workload("mlp_wide", "mlp", (16384, 1024, 4096), True, "wide MLP 16384×1024×4096 (bench)"),
    Workload("edsr_block", "conv", (16, 64, 64, 48, 48, 3), True,
             "EDSR conv block 16×64×48×48, 3×3 (bench)"),
    Workload("edsr_small", "conv", (2, 64, 64, 32, 32, 3), False,
             "EDSR conv block 2×64×32×32, 3×3 (launch-bound)"),
)
ACTIVATIONS = ("relu", "silu", "gelu")
MODES = {"detach": True, "second": False}
DTYPES = ("fp32-ieee", "fp32-tf32", "fp16", "bf16")
# The CI budget test's subset (--ci): every workload and mode, gelu (φ'' ≠ 0 and erf: the heaviest
# epilogues of the three) and the operand types that compile differently (fp16 compiles as bf16
# does, to the same MMA shapes). The report (the default) is every activation and dtype.
CI_ACTIVATIONS = ("gelu",)
CI_DTYPES = ("fp32-ieee", "fp32-tf32", "bf16")

# ---- the stub driver and the recording launch ------------------------------------------------------


class _StubDriver:
    """Enough of a Triton GPU driver for the JIT to bind, specialise and compile for `gpu`."""

    def __init__(self, gpu: Gpu):
        from triton.backends.compiler import GPUTarget

        self.target = GPUTarget("cuda", gpu.capability, 32)

    def is_active(self):
        return True

    def get_current_target(self):
        return self.target

    def get_current_device(self):
        return 0

    def get_current_stream(self, device=None):
        return 0

    def get_active_torch_device(self):
        import torch

        return torch.device("cpu")


@dataclasses.dataclass
class Launch:
    kernel: str           # JITFunction name
    module: str
    key: str              # the JIT's specialisation key (one compiled kernel per key)
    grid: Tuple[int, int, int]
    compile: dict         # what the compiler needs (signature, constexprs, options, attrs)
    bytes: int            # compulsory bytes: every distinct tensor argument once
    flops: int
    config: str


_RECORD: Optional[List[Launch]] = None


def _tensor_bytes(values) -> int:
    import torch

    seen, total = set(), 0
    for v in values:
        if isinstance(v, torch.Tensor) and v.numel():
            key = (v.untyped_storage().data_ptr(), v.storage_offset(), v.shape)
            if key not in seen:
                seen.add(key)
                total += v.numel() * v.element_size()
    return total


def _flops(name: str, args: dict) -> int:
    """FLOPs of the tl.dot work of one launch (elementwise work is not counted: those kernels are
    memory-bound by construction)."""
    if name == "gemm_kernel":
        return 2 * args["M"] * args["N"] * (args["K1"] + (args["K2"] if args["HAS_PAIR2"] else 0))
    if name.startswith("mlp_fused"):
        ndh = 2 * args["N"] * args["D"] * args["H"]
        if name == "mlp_fused_fwd_kernel":
            return 3 * ndh
        return (6 if args["DETACH"] else 8) * ndh
    return 0


def _recording_run(self, *args, grid, warmup, **kwargs):
    """JITFunction.run without a GPU: bind and specialise exactly as the JIT does, evaluate the
    grid, record the launch; compile nothing here (the report compiles each distinct key once)."""
    from triton import knobs
    from triton.runtime import driver

    kwargs["debug"] = kwargs.get("debug", self.debug) or knobs.runtime.debug
    kwargs["instrumentation_mode"] = knobs.compilation.instrumentation_mode
    # Keyed by the stub's target: the binder (and the options it derives) is made per target.
    kernel_cache, kernel_key_cache, target, backend, binder = self.device_caches[
        f"stub-{driver.active.get_current_target().arch}"]
    bound_args, specialization, options = binder(*args, **kwargs)
    from triton.runtime.jit import compute_cache_key

    key = compute_cache_key(kernel_key_cache, specialization, options)
    options, signature, constexprs, attrs = self._pack_args(backend, kwargs, bound_args,
                                                            specialization, options)
    grid = grid(bound_args) if callable(grid) else grid
    grid = tuple(int(g) for g in grid) + (1,) * (3 - len(grid))
    named = dict(bound_args)
    cfg = {k: named[k] for k in named if k.startswith("BLOCK") or k == "GROUP_M"}
    config = " ".join(f"{k[6:] if k.startswith('BLOCK_') else k}={v}" for k, v in cfg.items())
    config += f" w{options.num_warps} s{options.num_stages}"
    if _RECORD is not None:
        _RECORD.append(Launch(
            self.fn.__name__, self.fn.__module__, f"{self.fn.__name__}:{key}", grid,
            dict(signature=signature, constexprs=constexprs, options=options.__dict__,
                 attrs=attrs),
            _tensor_bytes(bound_args.values()), _flops(self.fn.__name__, named), config))
    return None


def _shape_only(op):
    """A torch op run on meta tensors and returned as uninitialised CPU tensors: the static
    report needs only the shapes of what cuDNN/cuBLAS would compute between the Triton kernels."""
    import torch

    @functools.wraps(op)
    def wrapped(*args, **kwargs):
        meta = lambda v: torch.empty_like(v, device="meta") if isinstance(v, torch.Tensor) else v  # noqa: E731
        out = op(*[meta(a) for a in args], **{k: meta(v) for k, v in kwargs.items()})
        return torch.empty_strided(out.shape, out.stride(), dtype=out.dtype)
    return wrapped


@contextlib.contextmanager
def stub_gpu(gpu: Gpu, tf32: bool):
    """Inside: the kernels' launch code sees `gpu` (policy Arch, Triton target), float32 dots
    follow `tf32`, and every Triton launch is recorded into the returned list."""
    global _RECORD
    import torch
    from triton.runtime import driver
    from triton.runtime.jit import JITFunction

    from gradres_fused.kernels import common, conv, policy

    arch = policy.Arch(f"sm_{gpu.capability}", gpu.shared_block, gpu.sm_count)
    saved = (JITFunction.run, policy.device_arch, torch.backends.cuda.matmul.allow_tf32,
             conv.F, conv.conv2d_input, conv.conv2d_weight)
    record: List[Launch] = []
    active = driver._active
    driver.set_active(_StubDriver(gpu))
    JITFunction.run = _recording_run
    policy.device_arch = lambda device, interpret=False: arch
    common.policy.device_arch = policy.device_arch
    torch.backends.cuda.matmul.allow_tf32 = tf32

    class _F:  # torch.nn.functional with the convolutions shape-only
        def __getattr__(self, name):
            return _shape_only(getattr(torch.nn.functional, name))
    conv.F = _F()
    conv.conv2d_input = _shape_only(saved[4])
    conv.conv2d_weight = _shape_only(saved[5])
    _RECORD = record
    try:
        yield record
    finally:
        _RECORD = None
        (JITFunction.run, policy.device_arch, torch.backends.cuda.matmul.allow_tf32,
         conv.F, conv.conv2d_input, conv.conv2d_weight) = saved
        common.policy.device_arch = policy.device_arch
        driver._active = active


_TORCH_DTYPE = {"fp32-ieee": "float32", "fp32-tf32": "float32", "fp16": "float16",
                "bf16": "bfloat16"}


def _inputs(w: Workload, dtype: str):
    import torch

    dt = getattr(torch, _TORCH_DTYPE[dtype])
    if w.family == "mlp":
        n, d, h = w.shape
        x, w1, w2 = (torch.empty(s, dtype=dt) for s in ((n, d), (h, d), (d, h)))
        b1, b2 = torch.empty(h, dtype=dt), torch.empty(d, dtype=dt)
    else:
        n, c, cm, hh, ww, k = w.shape
        x, w1, w2 = (torch.empty(s, dtype=dt) for s in ((n, c, hh, ww), (cm, c, k, k),
                                                         (c, cm, k, k)))
        b1, b2 = torch.empty(cm, dtype=dt), torch.empty(c, dtype=dt)
    return x, w1, b1, w2, b2, torch.zeros(1, dtype=dt)


def record_step(w: Workload, dtype: str, activation: str, detach: bool, gpu: Gpu
                ) -> List[Launch]:
    """The Triton launches of one training step (forward + backward) of the triton backend."""
    import torch

    from gradres_fused import triton_backend as tb

    x, w1, b1, w2, b2, alpha = _inputs(w, dtype)
    fwd, bwd = (tb._mlp_fwd, tb._mlp_bwd) if w.family == "mlp" else (tb._conv_fwd, tb._conv_bwd)
    eps = 1e-6
    with stub_gpu(gpu, dtype == "fp32-tf32") as record, torch.no_grad():
        y, z, a, g_hat, r = fwd(x, w1, b1, w2, b2, alpha, activation, True, eps, detach)
        bwd(torch.empty_like(y), x, w1, b1, w2, alpha, z, a, g_hat, r, activation, True, eps,
            detach)
    return record

# ---- compiling: one worker per distinct specialisation -----------------------------------------


def _ptxas_stats(log: str) -> dict:
    """Registers, stack and spills of the (single) entry function in a `ptxas -v` log."""
    m = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads"
                  r"\s*\n.*?Used (\d+) registers", log, re.S)
    if not m:
        raise RuntimeError(f"unreadable ptxas log:\n{log}")
    stack, stores, loads, regs = map(int, m.groups())
    return {"regs": regs, "stack": stack, "spill_stores": stores, "spill_loads": loads}


def _install_ptxas_capture():
    """Make Triton keep ptxas's -v report in the kernel's metadata (so it is cached with it)."""
    from triton import knobs
    from triton.backends.nvidia.compiler import CUDABackend

    if getattr(CUDABackend, "_gradres_capture", False):
        return
    original = CUDABackend.make_cubin

    def make_cubin(self, src, metadata, opt, capability):
        buf = io.StringIO()
        knobs.nvidia.dump_ptxas_log = True
        with contextlib.redirect_stdout(buf):
            cubin = original(self, src, metadata, opt, capability)
        metadata["gradres_ptxas"] = _ptxas_stats(buf.getvalue())
        return cubin
    CUDABackend.make_cubin = make_cubin
    CUDABackend._gradres_capture = True


def compile_job(job: dict) -> dict:
    """Compile one recorded specialisation for its capability; ptxas's figures and Triton's
    shared memory."""
    import importlib

    import triton
    from triton.backends.compiler import GPUTarget

    _install_ptxas_capture()
    start = time.time()
    fn = getattr(importlib.import_module(job["module"]), job["kernel"])
    while not hasattr(fn, "arg_names") or hasattr(fn, "configs"):
        fn = fn.fn
    c = job["compile"]
    src = triton.compiler.ASTSource(fn, c["signature"], c["constexprs"], c["attrs"])
    compiled = triton.compile(src, target=GPUTarget("cuda", job["capability"], 32),
                              options=c["options"])
    md = compiled.metadata
    stats = dict(md.gradres_ptxas) if hasattr(md, "gradres_ptxas") else None
    if stats is None:  # compiled before capture was installed (shared cache): ask ptxas again
        stats = _ptxas_rerun(compiled.asm["ptx"], job["capability"])
    return dict(key=job["key"], capability=job["capability"], shared=md.shared,
                num_warps=md.num_warps, seconds=round(time.time() - start, 1), **stats)


def _ptxas_rerun(ptx: str, capability: int) -> dict:
    import tempfile

    from triton.backends.nvidia.compiler import get_ptxas, sm_arch_from_capability

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "k.ptx")
        with open(path, "w") as f:
            f.write(ptx)
        out = subprocess.run([get_ptxas(capability).path, "-v",
                              f"--gpu-name={sm_arch_from_capability(capability)}", path, "-o",
                              path + ".o"], capture_output=True, text=True, check=True)
    return _ptxas_stats(out.stderr + out.stdout)

# ---- the CUDA extension -------------------------------------------------------------------------


def _short_cuda_name(symbol: str) -> str:
    """`act_bwd_kernel<bf16, Act 3>`-style name from an Itanium-mangled CUDA kernel symbol."""
    m = re.search(r"\d([a-z_]+_kernel)I(.*)E+vP", symbol)
    if not m:
        return symbol
    args = m.group(2)
    t = ("bf16" if "nv_bfloat16" in args else "fp16" if "__half" in args
         else "fp64" if args.startswith("d") else "fp32")
    extras = re.findall(r"L[A-Za-z0-9_]*?E?(\d+)E", args)
    return f"{m.group(1)}<{t}{''.join(',' + e for e in extras)}>"


# ---- the report -------------------------------------------------------------------------------


def _memory_bound(kernel: str) -> bool:
    return kernel not in ("gemm_kernel", "mlp_fused_fwd_kernel", "mlp_fused_bwd_kernel")


def _cells(workloads, activations, dtypes):
    for w in workloads:
        for dtype in dtypes:
            for act in activations:
                for mode, detach in MODES.items():
                    yield w, dtype, act, mode, detach


def collect(capabilities, workloads=WORKLOADS, activations=ACTIVATIONS, dtypes=DTYPES,
            workers: int = 2, log=print) -> dict:
    """Record every cell's launches on every arch, compile each distinct specialisation once,
    and return the rows (one per cell and launch) with their resources."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    rows, jobs = [], {}
    for cap in capabilities:
        gpu = GPUS[cap]
        for w, dtype, act, mode, detach in _cells(workloads, activations, dtypes):
            for i, launch in enumerate(record_step(w, dtype, act, detach, gpu)):
                rows.append(dict(capability=cap, workload=w.name, dtype=dtype, activation=act,
                                 mode=mode, index=i, kernel=launch.kernel, key=launch.key,
                                 grid=launch.grid, config=launch.config, bytes=launch.bytes,
                                 flops=launch.flops, big=w.big))
                jobs.setdefault((cap, launch.key), dict(
                    module=launch.module, kernel=launch.kernel, key=launch.key, capability=cap,
                    compile=launch.compile))
    log(f"static: {len(rows)} launches, {len(jobs)} distinct kernels to compile")
    results = {}
    start = time.time()
    # Slowest first (the fused MLP and GEMM kernels), so the pool's tail is short.
    order = sorted(jobs.values(), key=lambda j: j["kernel"] not in (
        "mlp_fused_bwd_kernel", "mlp_fused_fwd_kernel", "gemm_kernel"))
    with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as pool:
        for done, res in enumerate(pool.map(compile_job, order), 1):
            results[res["capability"], res["key"]] = res
            if done % 20 == 0 or done == len(order):
                log(f"static: compiled {done}/{len(order)} ({time.time() - start:.0f} s)")
    for row in rows:
        res = results[row["capability"], row["key"]]
        gpu = GPUS[row["capability"]]
        occ = occupancy(gpu, res["regs"], res["num_warps"], res["shared"])
        programs = row["grid"][0] * row["grid"][1] * row["grid"][2]
        row.update(regs=res["regs"], stack=res["stack"], spill_stores=res["spill_stores"],
                   spill_loads=res["spill_loads"], shared=res["shared"],
                   num_warps=res["num_warps"], programs=programs, **occ,
                   waves=round(programs / max(occ["blocks_per_sm"] * gpu.sm_count, 1), 3),
                   memory_bound=_memory_bound(row["kernel"]))
    return dict(rows=rows, compile_seconds=round(time.time() - start, 1))


def violations(rows) -> List[str]:
    """Every budget breach among `rows` (Triton launches and CUDA-extension kernels)."""
    out = []
    for r in rows:
        where = (f"{r.get('backend', 'triton')} sm_{r['capability']} {r['kernel']} "
                 f"[{r.get('config', '')}]"
                 + (f" {r['workload']} {r['dtype']} {r['activation']} {r['mode']}"
                    if "workload" in r else ""))
        spills = r["spill_stores"] + r["spill_loads"]
        if spills > BUDGET["spill_bytes"]:
            out.append(f"{where}: {r['spill_stores']} B spill stores + {r['spill_loads']} B "
                       f"spill loads per thread (budget {BUDGET['spill_bytes']})")
        if r["warps_per_sm"] < BUDGET["min_warps_per_sm"]:
            out.append(f"{where}: {r['warps_per_sm']} resident warps per SM ({r['regs']} regs, "
                       f"{r['num_warps']} warps, {r['shared']} B shared; limited by "
                       f"{r['limiter']}) < {BUDGET['min_warps_per_sm']}")
        per_thread = r.get("bytes", 0) / max(r.get("programs", 1) * 32 * r["num_warps"], 1)
        if (r.get("big") and r.get("memory_bound") and "waves" in r
                and r["waves"] < BUDGET["min_waves"]
                and per_thread > BUDGET["max_bytes_per_thread"]):
            out.append(f"{where}: grid {r['programs']} = {r['waves']} waves < "
                       f"{BUDGET['min_waves']} with {per_thread:.0f} B of traffic per thread, "
                       f"on a big workload (memory-bound kernel)")
    return out

# ---- torch ops between the kernels, and the plain / composite steps -----------------------------
_NO_KERNEL = {"empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided", "detach",
              "alias", "lift_fresh", "_unsafe_view", "clone_if_needed", "sym_size", "sym_stride",
              "sym_numel", "sym_storage_offset", "is_same_size", "_local_scalar_dense",
              "_to_copy_noop", "result_type"}

_FACTORIES = {"zeros", "zeros_like", "ones", "ones_like", "full", "full_like", "zero_", "fill_",
              "scalar_tensor"}


@dataclasses.dataclass
class TorchOp:
    name: str
    bytes: int
    flops: int


def torch_op_counter():
    """A TorchDispatchMode recording each aten op that launches a kernel on a GPU (views and
    allocations do not) with its bytes (distinct inputs and outputs) and FLOPs (torch's own
    flop counter formulas: matmuls and convolutions)."""
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_flatten
    from torch.utils.flop_counter import flop_registry

    class Counter(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.ops: List[TorchOp] = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            out = func(*args, **kwargs)
            name = func.overloadpacket.__name__
            if func.is_view or name in _NO_KERNEL or name.startswith("_has_compatible"):
                return out
            # Factories (new_zeros(x, …), zero_, fill_) write their output and read nothing.
            reads = () if name.startswith("new_") or name in _FACTORIES else (args, kwargs)
            tensors = [t for t in tree_flatten((reads, out))[0] if isinstance(t, torch.Tensor)]
            seen, nbytes = set(), 0
            for t in tensors:
                if id(t) not in seen:
                    seen.add(id(t))
                    nbytes += t.numel() * t.element_size()
            flops = 0
            if func.overloadpacket in flop_registry:
                flops = int(flop_registry[func.overloadpacket](*args, **kwargs, out_val=out))
            self.ops.append(TorchOp(name, nbytes, flops))
            return out
    return Counter()


def _plain_step(w: Workload, dtype: str, activation: str):
    """The plain residual block's training step (y = F(x) + x, forward and backward) on meta
    tensors: what the model compares every backend with."""
    import torch
    import torch.nn.functional as F

    from gradres_fused.activations import get_activation

    phi = get_activation(activation).fn
    params = [t.to("meta").requires_grad_(i > 0) for i, t in enumerate(_inputs(w, dtype)[:5])]
    x, w1, b1, w2, b2 = params
    counter = torch_op_counter()
    with counter:
        if w.family == "mlp":
            y = F.linear(phi(F.linear(x, w1, b1)), w2, b2) + x
        else:
            k = w1.shape[-1] // 2
            y = F.conv2d(phi(F.conv2d(x, w1, b1, padding=k)), w2, b2, padding=k) + x
        y.backward(torch.empty_like(y))
    return counter.ops


def _composite_step(w: Workload, dtype: str, activation: str, detach: bool):
    import torch

    from gradres_fused import composite

    params = [t.to("meta").requires_grad_(i > 0) for i, t in enumerate(_inputs(w, dtype))]
    fn = composite.gradres_mlp if w.family == "mlp" else composite.gradres_conv2d
    counter = torch_op_counter()
    with counter:  # the backend's own function: gradres_fused.gradres_* refuses meta tensors
        y = fn(*params, activation=activation, normalize=True, eps=1e-6, detach=detach)
        y.backward(torch.empty_like(y))
    return counter.ops


def _triton_torch_ops(w: Workload, dtype: str, activation: str, detach: bool, gpu: Gpu):
    """The torch ops the triton backend runs between its kernels in one step (cuDNN
    convolutions, small sums, allocations that zero)."""
    import torch

    from gradres_fused import triton_backend as tb

    x, w1, b1, w2, b2, alpha = _inputs(w, dtype)
    fwd, bwd = (tb._mlp_fwd, tb._mlp_bwd) if w.family == "mlp" else (tb._conv_fwd, tb._conv_bwd)
    counter = torch_op_counter()
    with stub_gpu(gpu, dtype == "fp32-tf32"), torch.no_grad():
        y_bar = torch.empty(x.shape, dtype=x.dtype)
        with counter:
            y, z, a, g_hat, r = fwd(x, w1, b1, w2, b2, alpha, activation, True, 1e-6, detach)
            bwd(y_bar, x, w1, b1, w2, alpha, z, a, g_hat, r, activation, True, 1e-6, detach)
    return counter.ops

# ---- the paper model --------------------------------------------------------------------------------
# H100 SXM, dense peaks (NVIDIA H100 datasheet): HBM3 3.35 TB/s; FP32 67 TFLOP/s (FMA); TF32
# 495 TFLOP/s; FP16/BF16 990 TFLOP/s. Plus a fixed cost per kernel launch.
MODEL = {"bandwidth": 3.35e12, "launch_s": 4e-6,
         "peak": {"fp32-ieee": 67e12, "fp32-tf32": 495e12, "fp16": 990e12, "bf16": 990e12}}


def model_time(kernels, dtype: str) -> Dict[str, float]:
    """Σ over kernels of max(bytes / bandwidth, FLOPs / peak) + launch cost; seconds."""
    peak = MODEL["peak"][dtype]
    work = sum(max(b / MODEL["bandwidth"], f / peak) for b, f in kernels)
    return {"launches": len(kernels), "bytes": sum(b for b, _ in kernels),
            "flops": sum(f for _, f in kernels), "work_s": work,
            "launch_s": len(kernels) * MODEL["launch_s"],
            "total_s": work + len(kernels) * MODEL["launch_s"]}


def model_rows(workloads=WORKLOADS, dtypes=DTYPES, activation="gelu") -> List[dict]:
    """Per workload, dtype and mode: modelled step time of plain, composite and triton (its
    kernels from the recorded launches on sm_90 plus its torch ops), and the ratios."""
    out = []
    gpu = GPUS[90]
    for w in workloads:
        for dtype in dtypes:
            plain = model_time([(o.bytes, o.flops) for o in _plain_step(w, dtype, activation)],
                               dtype)
            for mode, detach in MODES.items():
                comp = model_time([(o.bytes, o.flops) for o in
                                   _composite_step(w, dtype, activation, detach)], dtype)
                launches = record_step(w, dtype, activation, detach, gpu)
                torch_ops = _triton_torch_ops(w, dtype, activation, detach, gpu)
                tri = model_time([(l.bytes, l.flops) for l in launches]
                                 + [(o.bytes, o.flops) for o in torch_ops], dtype)
                tri["triton_launches"] = len(launches)
                out.append(dict(workload=w.name, dtype=dtype, mode=mode, activation=activation,
                                plain=plain, composite=comp, triton=tri,
                                launch_bound=tri["launch_s"] > tri["work_s"],
                                ratio_triton=tri["total_s"] / plain["total_s"],
                                ratio_composite=comp["total_s"] / plain["total_s"]))
    return out

# ---- the CUDA extension's stage kernels ----------------------------------------------------------
CUDA_SOURCE = os.path.join("csrc", "cuda", "stages.cu")
CUDA_PROBE = os.path.join("bench", "cuda_launch_probe.cpp")
CUDA_NVCC_FLAGS = ["-O3", "-lineinfo"]  # setup.py's nvcc flags for the extension
_CUDA_DTYPE = {"fp32-ieee": "f32", "fp32-tf32": "f32", "fp16": "f16", "bf16": "bf16"}
_CUDA_ACT = {"relu": 0, "gelu": 1, "gelu_tanh": 2, "silu": 3, "tanh": 4, "sin": 5}  # csrc Act


def _nvcc() -> str:
    import nvidia

    return os.path.join(list(nvidia.__path__)[0], "cu13", "bin", "nvcc")


@functools.lru_cache(maxsize=None)
def cuda_probe(capability: int, build_dir: str) -> Tuple[str, Dict[str, dict]]:
    """Build csrc/cuda/stages.cu (torch-free: it compiles on its own) for `capability` with
    setup.py's nvcc flags and `-Xptxas -v`, linked with bench/cuda_launch_probe.cpp against a stub
    CUDA runtime: (the probe binary, ptxas's figures per mangled kernel)."""
    os.makedirs(build_dir, exist_ok=True)
    exe = os.path.join(build_dir, f"cuda_launch_probe_sm{capability}")
    out = subprocess.run([_nvcc(), *CUDA_NVCC_FLAGS, "-std=c++17", f"-arch=sm_{capability}",
                          "-cudart", "none", "-Xptxas", "-v", "-I", "csrc",
                          "-I", os.path.join("csrc", "cuda"), CUDA_SOURCE, CUDA_PROBE, "-o", exe],
                         cwd=ROOT, capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(f"nvcc {CUDA_SOURCE} + {CUDA_PROBE} for sm_{capability} failed:\n"
                           f"{out.stderr[-3000:]}")
    stats = {}
    for block in re.split(r"(?=ptxas info\s+: Compiling entry function)", out.stderr):
        m = re.search(r"Compiling entry function '(\S+)'", block)
        if not m:
            continue
        st = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill "
                       r"loads", block)
        used = re.search(r"Used (\d+) registers(?:.*?(\d+) bytes smem)?", block)
        stack, stores, loads = map(int, st.groups())
        stats[m.group(1)] = dict(regs=int(used.group(1)), shared=int(used.group(2) or 0),
                                 stack=stack, spill_stores=stores, spill_loads=loads)
    return exe, stats


def cuda_step_calls(w: Workload, detach: bool) -> List[Tuple[str, int, int, bool]]:
    """The stage calls of one cpp training step on CUDA, (stage, rows, cols, detach): a mirror of
    csrc/blocks.h block_fwd / block_bwd with CudaStages (kSeedsInputGrad = false). Rows are
    samples; act stages see P = H (MLP) or Cm·H·W (conv), mix stages Q = D or C·H·W."""
    if w.family == "mlp":
        n, q, p = w.shape
    else:
        n, c, cm, hh, ww, _ = w.shape
        q, p = c * hh * ww, cm * hh * ww
    calls = [("act_fwd", n, p, detach), ("mix_fwd", n, q, detach)]
    if not detach:
        calls.append(("mix_bwd", n, q, False))
    calls.append(("act_bwd", n, p, detach))
    calls.append(("mix_bwd", n, q, True) if detach else ("add_skip_grad", n, q, False))
    return calls


# Tensors of rows × cols each launch reads or writes (a model of its compulsory traffic).
_CUDA_PASSES = {"act_fwd_kernel": 3, "mix_fwd_warp_kernel": 5, "mix_fwd_split_kernel": 5,
                "sum_squares_kernel": 1, "mix_bwd_sums_kernel": 4, "g_bar_split_kernel": 3,
                "add_skip_grad_kernel": 3}


def _cuda_bytes(kernel: str, rows: int, cols: int, elem: int, detach: bool) -> int:
    base = kernel.split("<")[0]
    if base == "mix_bwd_warp_kernel":
        return (4 if detach else 5) * rows * cols * elem
    if base == "act_bwd_kernel":
        return (3 if detach else 6) * rows * cols * elem
    red = 8 if elem == 4 else 4  # Red<T>::type of csrc/cuda/stages.cuh: double for float32
    if base in ("alpha_partial_kernel", "alpha_bar_kernel"):
        # ᾱ's stage 1 reads the per-row (or per-segment) partials, stage 2 its <= 256 groups
        return rows * red if base == "alpha_partial_kernel" else _alpha_groups(rows) * red
    if base in ("col_partial_sum_kernel", "col_final_kernel"):
        # the column sums over act_bwd's chunk partials (W = P, or 2P in second order): stage 1
        # reads chunks x W partials, stage 2 the groups' W sums (stages.cuh's formulas)
        width = cols if detach else 2 * cols
        chunks = _ceil_div(rows, _act_bwd_chunk_rows(rows, cols))
        if base == "col_partial_sum_kernel":
            return chunks * width * red
        return min(64, max(1, _ceil_div(chunks, 64))) * width * red
    return _CUDA_PASSES.get(base, 1) * rows * cols * elem


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def _alpha_groups(count: int) -> int:  # stages.cuh alpha_groups
    return min(256, max(1, _ceil_div(count, 2048)))


def _act_bwd_chunk_rows(rows: int, p: int) -> int:  # stages.cuh act_bwd_chunk_rows
    col_blocks = max(1, _ceil_div(p, 64))
    return max(16, _ceil_div(rows, _ceil_div(4224, col_blocks)), _ceil_div(rows, 65535))


def cuda_rows(capabilities, workloads=WORKLOADS, activations=CI_ACTIVATIONS, dtypes=DTYPES,
              build_dir: Optional[str] = None) -> Tuple[List[dict], List[dict]]:
    """(launch rows, per-kernel rows) of the CUDA extension: each cell's stage calls run through
    the extension's own launchers (the probe), with ptxas's figures and occupancy per kernel."""
    import tempfile

    build_dir = build_dir or tempfile.mkdtemp(prefix="gradres-static-cuda-")
    launches, kernels = [], []
    for cap in capabilities:
        gpu = GPUS[cap]
        exe, stats = cuda_probe(cap, build_dir)
        for symbol, st in sorted(stats.items()):
            kernels.append(dict(backend="cpp", capability=cap, kernel=_short_cuda_name(symbol),
                                symbol=symbol, **st))
        cells = list(_cells(workloads, activations, dtypes))
        script = "".join(f"{stage} {_CUDA_DTYPE[dtype]} {rows} {cols} {_CUDA_ACT[act]} 1 "
                         f"{int(det)}\n"
                         for w, dtype, act, mode, detach in cells
                         for stage, rows, cols, det in cuda_step_calls(w, detach))
        out = subprocess.run([exe], input=script, capture_output=True, text=True, check=True,
                             env=dict(os.environ, GRADRES_PROBE_SMS=str(gpu.sm_count))).stdout
        calls = iter(out.splitlines())
        line = next(calls, None)
        for w, dtype, act, mode, detach in cells:
            elem = 2 if dtype in ("fp16", "bf16") else 4
            index = 0
            for stage, rows, cols, det in cuda_step_calls(w, detach):
                assert line is not None and line.startswith(f"call {stage} "), line
                line = next(calls, None)
                while line is not None and line.startswith("launch "):
                    _, symbol, *dims = line.split()
                    gx, gy, gz, bx, by, bz = map(int, dims)
                    threads = bx * by * bz
                    st = stats[symbol]
                    warps = -(-threads // 32)
                    occ = occupancy(gpu, st["regs"], warps, st["shared"])
                    programs = gx * gy * gz
                    kernel = _short_cuda_name(symbol)
                    launches.append(dict(
                        backend="cpp", capability=cap, workload=w.name, dtype=dtype,
                        activation=act, mode=mode, index=index, stage=stage, kernel=kernel,
                        config=f"{threads} threads", grid=(gx, gy, gz), programs=programs,
                        num_warps=warps, **st, **occ, big=w.big, memory_bound=True,
                        bytes=_cuda_bytes(kernel, rows, cols, elem, det),
                        waves=round(programs / max(occ["blocks_per_sm"] * gpu.sm_count, 1), 3)))
                    index += 1
                    line = next(calls, None)
    return launches, kernels

# ---- writing the report ---------------------------------------------------------------------------


def _persistent_check(rows) -> List[str]:
    """The fused backward's persistent grid: at least two programs per SM when there are that
    many row tiles."""
    out = []
    for r in rows:
        if r["kernel"] == "mlp_fused_bwd_kernel" and r.get("big"):
            gpu = GPUS[r["capability"]]
            if r["programs"] < 2 * gpu.sm_count:
                out.append(f"triton sm_{r['capability']} mlp_fused_bwd_kernel {r['workload']} "
                           f"{r['dtype']}: persistent grid {r['programs']} < 2 per SM")
    return out


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return str(n)


def render(cap: int, report: dict) -> str:
    gpu = GPUS[cap]
    rows = [r for r in report["rows"] if r["capability"] == cap]
    cuda = [r for r in report["cuda"] if r["capability"] == cap]
    lines = [f"# Static GPU report, {gpu.name}",
             "",
             f"Generated by `python -m bench.static` ({report['generated']}; Triton "
             f"{report['triton']}, ptxas {report['ptxas']}). Nothing here ran on a GPU: the "
             "project's launch code ran on CPU tensors behind a stub driver reporting this GPU, "
             "every launch was recorded with its grid, and each distinct specialisation was "
             "compiled through ptxas. Occupancy: resident blocks per SM limited by registers, "
             "threads, shared memory (+1 KiB reserved per block) and the 32-block cap. Waves = "
             "programs ÷ (blocks per SM × SMs).",
             "",
             f"Budget (tests/test_gpu_static.py): spill bytes = {BUDGET['spill_bytes']} in every "
             f"kernel; ≥ {BUDGET['min_warps_per_sm']} resident warps per SM in every kernel; ≥ "
             f"{BUDGET['min_waves']} waves for memory-bound kernels moving ≥ "
             f"{_fmt_bytes(WAVES_MIN_BYTES)} on the big workloads unless the grid already "
             f"gives each thread ≤ {BUDGET['max_bytes_per_thread']} B of traffic (as parallel "
             "as the tensors allow); the fused MLP backward's "
             "persistent grid ≥ 2 programs per SM.",
             "",
             f"**Budget breaches on sm_{cap}: {len(report['violations'][str(cap)])}**"]
    lines += [f"- {v}" for v in report["violations"][str(cap)][:50]]
    lines += ["", "## Triton kernels per workload (launch order of one training step)", ""]
    for w in WORKLOADS:
        wrows = [r for r in rows if r["workload"] == w.name]
        if not wrows:
            continue
        lines += [f"### {w.what}", "",
                  "| dtype | act | mode | # | kernel | config | grid | regs | spills st/ld B | "
                  "stack B | shared B | warps/SM | waves | compulsory bytes |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in wrows:
            lines.append(
                f"| {r['dtype']} | {r['activation']} | {r['mode']} | {r['index']} | "
                f"{r['kernel'].replace('_kernel', '')} | {r['config']} | {r['programs']} | "
                f"{r['regs']} | {r['spill_stores']}/{r['spill_loads']} | {r['stack']} | "
                f"{r['shared']} | {r['warps_per_sm']} | {r['waves']:.2f} | "
                f"{_fmt_bytes(r['bytes'])} |")
        lines.append("")
    lines += ["## CUDA extension (backend `cpp`): csrc/cuda/stages.cu", "",
              f"csrc/cuda/stages.cu compiled here with the venv's nvcc ({' '.join(CUDA_NVCC_FLAGS)}"
              ", setup.py's flags) and `-Xptxas -v`, linked with bench/cuda_launch_probe.cpp "
              "against a stub CUDA runtime reporting this GPU's SM count: the grids are what the "
              "extension's own launchers compute. The sequence of stage calls per step mirrors "
              "csrc/blocks.h (bench.static.cuda_step_calls); the GEMMs and convolutions between "
              "them are ATen's (cuBLAS/cuDNN) and not listed. Bytes: a model of each kernel's "
              "traffic (rows × cols × the tensors it touches).", ""]
    cuda_cells = {}
    for r in cuda:
        cuda_cells.setdefault(r["workload"], []).append(r)
    for w in WORKLOADS:
        if w.name not in cuda_cells:
            continue
        lines += [f"### {w.what}", "",
                  "| dtype | act | mode | # | kernel | block | grid | regs | spills st/ld B | "
                  "stack B | warps/SM | waves | bytes |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in cuda_cells[w.name]:
            grid = "×".join(str(g) for g in r["grid"] if g > 1) or "1"
            lines.append(
                f"| {r['dtype']} | {r['activation']} | {r['mode']} | {r['index']} | "
                f"{r['kernel']} | {r['config']} | {grid} | {r['regs']} | "
                f"{r['spill_stores']}/{r['spill_loads']} | {r['stack']} | {r['warps_per_sm']} | "
                f"{r['waves']:.2f} | {_fmt_bytes(r['bytes'])} |")
        lines.append("")
    kern = report.get("cuda_kernels", [])
    spilling = [k for k in kern if k["spill_stores"] + k["spill_loads"]]
    lines += [f"Every instantiation in stages.cu ({len(kern)} kernels): "
              f"{len(spilling)} with spills, registers {min((k['regs'] for k in kern), default=0)}"
              f"–{max((k['regs'] for k in kern), default=0)}, stack > 0 in "
              f"{sum(1 for k in kern if k['stack'])}.", ""]
    if report.get("model") and cap == 90:
        lines += ["", "## A paper model of GPU time (a model, not a measurement)", "",
                  "H100 SXM roofline: each kernel or torch op costs max(compulsory bytes ÷ "
                  "3.35 TB/s, FLOPs ÷ peak) + 4 µs per launch (peak: 67 TFLOP/s float32 FMA, "
                  "495 TF32, 990 fp16/bf16 dense). Compulsory bytes: every tensor a kernel "
                  "takes, once; torch ops between the kernels (cuDNN convolutions, sums) are "
                  "counted by a dispatch mode on meta tensors, as are plain (y = F(x) + x, "
                  "autograd) and composite (autograd through its closed forms). gelu; a "
                  "training step = forward + backward of one block; triton's launches include "
                  "the torch ops between its kernels. Launch-bound: the launches' 4 µs each "
                  "outweigh the roofline time. `cpp` is not modelled (its ATen calls come from "
                  "C++); its last column counts its fused-stage launches only (the GEMMs or "
                  "convolutions come on top).", "",
                  "| workload | dtype | mode | plain µs (launches) | composite µs (launches) | "
                  "triton µs (launches) | triton ÷ plain | composite ÷ plain | launch-bound | "
                  "cpp stage launches |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for m in report["model"]:
            cpp = sum(1 for r in cuda if (r["workload"], r["dtype"], r["mode"], r["activation"])
                      == (m["workload"], m["dtype"], m["mode"], m["activation"]))
            lines.append(
                f"| {m['workload']} | {m['dtype']} | {m['mode']} | "
                f"{m['plain']['total_s'] * 1e6:.0f} ({m['plain']['launches']}) | "
                f"{m['composite']['total_s'] * 1e6:.0f} ({m['composite']['launches']}) | "
                f"{m['triton']['total_s'] * 1e6:.0f} ({m['triton']['launches']}) | "
                f"{m['ratio_triton']:.2f} | {m['ratio_composite']:.2f} | "
                f"{'yes' if m['launch_bound'] else 'no'} | {cpp or '-'} |")
    return "\n".join(lines) + "\n"


# Below this a memory-bound kernel is over in ~0.3 µs at full bandwidth: launch-bound, not
# grid-bound (the S-map and its adjoint). 1 MiB on one SM would take tens of µs.
WAVES_MIN_BYTES = 2 ** 20


def check(rows, cuda_launches) -> List[str]:
    """All budget breaches of the launches of both backends (spills, resident warps, waves of
    the big memory-bound kernels, the fused backward's persistent grid), each distinct breach
    once."""
    def waves_scope(rs):
        return [dict(r, big=r["big"] and r["bytes"] >= WAVES_MIN_BYTES) for r in rs]
    out = violations(waves_scope(rows)) + _persistent_check(rows) + violations(
        waves_scope(cuda_launches))
    return list(dict.fromkeys(out))


def run(capabilities, *, ci=False, workers=2, model=True, cuda=True, log=print) -> dict:
    import triton

    acts, dtypes = (CI_ACTIVATIONS, CI_DTYPES) if ci else (ACTIVATIONS, DTYPES)
    report = collect(capabilities, activations=acts, dtypes=dtypes, workers=workers, log=log)
    report["cuda"], report["cuda_kernels"] = (cuda_rows(capabilities, activations=acts,
                                                        dtypes=dtypes) if cuda else ([], []))
    log(f"static: CUDA extension: {len(report['cuda'])} launches, "
        f"{len(report['cuda_kernels'])} kernels")
    report["violations"] = {
        str(cap): check([r for r in report["rows"] if r["capability"] == cap],
                        [r for r in report["cuda"] if r["capability"] == cap])
        for cap in capabilities}
    report["model"] = model_rows() if model and 90 in capabilities else []
    from triton.backends.nvidia.compiler import get_ptxas_version

    report.update(generated=time.strftime("%Y-%m-%d"), triton=triton.__version__,
                  ptxas=get_ptxas_version().strip().splitlines()[-1], budget=BUDGET,
                  activations=list(acts), dtypes=list(dtypes), subset="ci" if ci else "report")
    return report


def write_json(report: dict, f) -> None:
    """The report as JSON, one row per line (readable diffs), without the JIT's long
    specialisation keys and the mangled symbols (kernel, config and dtype name each row)."""
    drop = ("key", "symbol")
    f.write("{\n")
    for i, (k, val) in enumerate(report.items()):
        sep = "," if i < len(report) - 1 else ""
        if isinstance(val, list) and val and isinstance(val[0], dict):
            items = [json.dumps({f2: v for f2, v in r.items() if f2 not in drop}, default=str)
                     for r in val]
            f.write(f" {json.dumps(k)}: [\n  " + ",\n  ".join(items) + f"\n ]{sep}\n")
        else:
            f.write(f" {json.dumps(k)}: {json.dumps(val, default=str)}{sep}\n")
    f.write("}\n")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.static", description=__doc__.split(
        "\n\n")[0])
    parser.add_argument("--arch", nargs="+", type=int, default=[80, 90], choices=sorted(GPUS))
    parser.add_argument("--ci", action="store_true",
                        help="the CI budget test's subset (gelu; fp32 IEEE, TF32, bf16) rather "
                             "than the report's (relu, silu, gelu × every dtype)")
    parser.add_argument("--workers", type=int, default=int(os.environ.get(
        "GRADRES_STATIC_WORKERS", "2")))
    parser.add_argument("--out", default=os.path.join(ROOT, "bench", "results"))
    parser.add_argument("--no-write", action="store_true", help="print the breaches only")
    parser.add_argument("--no-model", action="store_true", help="skip the paper model of time")
    args = parser.parse_args(argv)
    start = time.time()
    report = run(args.arch, ci=args.ci, workers=args.workers, model=not args.no_model,
                 log=lambda m: print(m, file=sys.stderr, flush=True))
    breaches = sum(len(v) for v in report["violations"].values())
    if not args.no_write:
        for cap in args.arch:
            base = os.path.join(args.out, f"gpu-static-sm{cap}")
            sub = dict(report, rows=[r for r in report["rows"] if r["capability"] == cap],
                       cuda=[r for r in report["cuda"] if r["capability"] == cap],
                       cuda_kernels=[r for r in report["cuda_kernels"]
                                     if r["capability"] == cap],
                       violations={str(cap): report["violations"][str(cap)]},
                       model=report["model"] if cap == 90 else [])
            with open(base + ".json", "w") as f:
                write_json(sub, f)
            with open(base + ".md", "w") as f:
                f.write(render(cap, sub))
            print(f"static: wrote {base}.md/.json", file=sys.stderr)
    for cap in args.arch:
        for v in report["violations"][str(cap)]:
            print(f"BREACH {v}")
    print(f"static: {breaches} budget breaches; {time.time() - start:.0f} s", file=sys.stderr)
    return 1 if breaches else 0


if __name__ == "__main__":
    sys.path.insert(0, ROOT)
    sys.exit(main())
