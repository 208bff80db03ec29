"""Ahead-of-time compile of the Triton kernels for sm_80 and sm_90, without a GPU.

Triton's interpreter (how the rest of the suite runs the kernels on CPU) accepts programs the GPU
compiler rejects, and knows nothing of shared memory. This test builds the kernels with
`triton.compile(ASTSource(...), target=GPUTarget("cuda", 80 | 90, 32))` in a subprocess that never
ran the interpreter (the interpreter patches triton.language globally), with a fresh temporary
TRITON_CACHE_DIR (no earlier result is trusted), two compiles at a time.

What is covered. The launch policy's reachable set (kernels/policy.py `reachable`: default
policy and pruned autotuner candidates) is ~1,400 (kernel, config, dtype, arch) tuples and one
compile of a wide fused kernel takes tens of CPU-seconds, so CI's run builds a covering subset:
- fused MLP forward, fused MLP backward, tiled GEMM: for each arch and each operand type the
  backend serves — float32 with IEEE dots and float32 with TF32 dots (torch's matmul precision
  picks one; different tl.dot code), float16, bfloat16 (different MMA instructions) — the
  reachable config with the largest shared-memory estimate (the one nearest the arch's limit), in
  the heaviest variant (second order, normalized, gelu_tanh, biases; GEMM: the dual z̄ epilogue
  with both operand pairs). bfloat16 jobs run the whole pipeline down to ptxas; the other types
  stop after TTGIR → LLVM IR, where Triton has allocated shared memory (`metadata["shared"]` is
  final) and where layout and lowering rejections happen;
- every elementwise / row kernel (rows.py, conv.py) with its fixed config, float32 and bfloat16
  data, both archs, down to ptxas (about a CPU-second each).
Not compiled here: the smaller configs and the lighter variants (first order, relu, no bias) of
the same kernels; the check that bounds them is the estimate, asserted here to be an upper bound
of the compiler's figure on the configs nearest the limit. GRADRES_AOT_FULL=1 compiles every
reachable config through ptxas instead (hours on two cores: for a GPU image, not CI).
Checked: the compiler accepts each program, its shared memory is within the arch's limit and
within the policy's estimate. Cost: 60 compiles, ~225 CPU-seconds (~2 minutes on two cores).
"""
from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

# Operand types (kernels/policy.py OPERANDS): pointer type of the data tensors, tl.dot precision
DTYPES = {"fp32-ieee": ("fp32", "ieee"), "fp32-tf32": ("fp32", "tf32"),
          "fp16": ("fp16", None), "bf16": ("bf16", None)}
# Pointers that always hold accumulation-type (or float64) buffers, whatever the data dtype.
_ACC_POINTERS = {"s_ptr": "fp32", "col1_ptr": "fp32", "col2_ptr": "fp32", "w1p_ptr": "fp32",
                 "w2p_ptr": "fp32", "vecp_ptr": "fp32", "alphap_ptr": "fp64", "r_ptr": "fp32",
                 "dot_ptr": "fp32", "sbar_ptr": "fp32", "w2s_ptr": "fp32"}
# The dtype whose jobs run the whole pipeline (PTX and ptxas) in the default covering run; the
# others stop at LLVM IR (see the module docstring).
FULL_PIPELINE_DTYPE = "bf16"
_OUT_POINTER = {"row_sumsq_kernel": "fp32", "row_bwd_sums_kernel": "fp64",
                "smap_adjoint_kernel": "fp32"}
ELEMENTWISE_KERNELS = {
    "rows": ("row_sumsq_kernel", "row_mix_kernel", "row_bwd_sums_kernel", "row_gbar_kernel"),
    "conv": ("smap_kernel", "smap_adjoint_kernel", "hidden_kernel", "zbar_kernel",
             "skip_grad_kernel"),
}


# ---- worker side (a fresh process: no interpreter, no pytest) ------------------------------------
def _jit_function(module: str, name: str):
    import importlib

    kernel = getattr(importlib.import_module(f"gradres_fused.kernels.{module}"), name)
    while not hasattr(kernel, "arg_names") or hasattr(kernel, "configs"):
        kernel = kernel.fn  # an Autotuner/Heuristics wrapper (GRADRES_AUTOTUNE=1)
    return kernel


def _signature(fn, name: str, data: str, constexprs: dict) -> dict:
    sig = {}
    for param in fn.params:
        arg = param.name
        if arg in constexprs:
            sig[arg] = "constexpr"
        elif arg.endswith("_ptr"):
            if arg == "out_ptr":
                sig[arg] = "*" + _OUT_POINTER.get(name, data)
            else:
                sig[arg] = "*" + _ACC_POINTERS.get(arg, data)
        elif arg == "eps":
            sig[arg] = "fp32"
        else:
            sig[arg] = "i32"
    return sig


def _constexprs(module: str, name: str, prec, meta: dict) -> dict:
    import triton.language as tl

    from gradres_fused.kernels.activations import activation_constexprs

    heavy = dict(activation_constexprs("gelu_tanh"), ACC=tl.float32)
    if module == "mlp_fused":
        heavy.update(HAS_B1=True, NORMALIZE=True, PREC=prec)
        if name.endswith("fwd_kernel"):  # the forward has no φ'' term
            heavy.pop("D2_ZERO")
            heavy.update(HAS_B2=True)
        else:
            heavy.update(DETACH=False)
    elif module == "gemm":
        from gradres_fused.kernels import gemm
        heavy.update(EPI=gemm.ZBAR, DUAL=True, HAS_PAIR2=True, HAS_VEC=False, PREC=prec)
    elif name in ("hidden_kernel", "smap_kernel", "skip_grad_kernel", "row_sumsq_kernel",
                  "row_bwd_sums_kernel", "smap_adjoint_kernel"):
        heavy.pop("D2_ZERO")
        if name in ("smap_kernel", "skip_grad_kernel", "row_sumsq_kernel",
                    "row_bwd_sums_kernel", "smap_adjoint_kernel"):
            heavy.pop("ACT")
    elif name == "zbar_kernel":
        heavy.update(SECOND=True)
    else:  # row_mix_kernel, row_gbar_kernel
        heavy = dict(ACC=tl.float32, NORMALIZE=True)
    return dict(heavy, **meta)


class _LoweredToLLVM(Exception):
    """Raised in place of PTX generation for a job compiled `through` "llir"."""


def _stop_after_llir():
    """Make this worker's compiles end after TTGIR → LLVM IR, where Triton allocates shared memory
    (metadata["shared"] is final there); PTX generation and ptxas are skipped."""
    from triton.backends.nvidia.compiler import CUDABackend

    def make_ptx(self, src, metadata, *args, **kwargs):
        raise _LoweredToLLVM(metadata["shared"])
    CUDABackend.make_ptx = make_ptx


def compile_one(job: dict) -> dict:
    """Compile one job (kernel, meta, warps, stages, dtype, capability, through: "cubin" for the
    whole pipeline down to ptxas, "llir" to stop once shared memory is allocated); the result as a
    dict."""
    import resource

    import triton
    from triton.backends.compiler import GPUTarget
    from triton.backends.nvidia.compiler import CUDABackend

    if not hasattr(CUDABackend, "_full_make_ptx"):
        CUDABackend._full_make_ptx = CUDABackend.make_ptx
    if job["through"] == "llir":
        _stop_after_llir()
    else:
        CUDABackend.make_ptx = CUDABackend._full_make_ptx

    def cpu_seconds():  # this process and its finished children (ptxas)
        return (time.process_time()
                + resource.getrusage(resource.RUSAGE_CHILDREN).ru_utime
                + resource.getrusage(resource.RUSAGE_CHILDREN).ru_stime)

    start, cpu_start = time.time(), cpu_seconds()
    data, prec = DTYPES[job["dtype"]]
    fn = _jit_function(job["module"], job["kernel"])
    constexprs = _constexprs(job["module"], job["kernel"], prec, job["meta"])
    out = dict(job)
    try:
        src = triton.compiler.ASTSource(
            fn=fn, signature=_signature(fn, job["kernel"], data, constexprs),
            constexprs=constexprs)
        compiled = triton.compile(src, target=GPUTarget("cuda", job["capability"], 32),
                                  options={"num_warps": job["num_warps"],
                                           "num_stages": job["num_stages"]})
        out["shared"] = compiled.metadata.shared
    except _LoweredToLLVM as done:
        out["shared"] = done.args[0]
    except Exception as e:  # reported (with the job) by the test, not swallowed
        out["error"] = f"{type(e).__name__}: {e}"[-2000:]
    out["seconds"] = round(time.time() - start, 1)
    out["cpu_seconds"] = round(cpu_seconds() - cpu_start, 1)
    return out


def jobs(full: bool = False) -> list:
    """The compile jobs: the covering subset described in the module docstring (or, full, every
    reachable config through ptxas), with the policy's shared-memory estimate and the arch's
    limit."""
    from gradres_fused.kernels import policy

    def estimate(launch: policy.Launch) -> int:
        kw, (e, tf32) = launch.config.kwargs, policy.OPERANDS[launch.dtype]
        if launch.kernel == policy.GEMM:
            return policy.gemm_shared_bytes(e, kw["BLOCK_M"], kw["BLOCK_N"], kw["BLOCK_K"],
                                            launch.config.num_stages)
        return policy.fused_shared_bytes(launch.kernel, e, kw["BLOCK_M"], kw["BLOCK_D"],
                                         kw["BLOCK_H"], tf32)

    module = {"mlp_fused_fwd": "mlp_fused", "mlp_fused_bwd": "mlp_fused", policy.GEMM: "gemm"}
    chosen = {}
    for launch in policy.reachable():
        key = (launch.kernel, launch.arch.name, launch.dtype) + ((launch.config,) if full else ())
        if key not in chosen or estimate(launch) > chosen[key][1]:
            chosen[key] = (launch, estimate(launch))
    out = []
    for (kernel, _, dtype, *_), (launch, est) in sorted(chosen.items(), key=lambda kv: -kv[1][1]):
        out.append(dict(module=module[kernel], kernel=f"{kernel}_kernel", meta=launch.config.kwargs,
                        num_warps=launch.config.num_warps, num_stages=launch.config.num_stages,
                        dtype=dtype, capability=int(launch.arch.name[3:]),
                        limit=launch.arch.shared_bytes, estimate=est,
                        through="cubin" if full or dtype == FULL_PIPELINE_DTYPE else "llir"))
    for arch, dtype in itertools.product((policy.SM80, policy.SM90), ("fp32-ieee", "bf16")):
        for module_name, names in ELEMENTWISE_KERNELS.items():
            for name in names:
                meta = ({"BLOCK_W": 128} if name == "smap_adjoint_kernel"
                        else policy.ELEMENTWISE.kwargs)
                out.append(dict(module=module_name, kernel=name, meta=meta,
                                num_warps=policy.ELEMENTWISE.num_warps,
                                num_stages=policy.ELEMENTWISE.num_stages, dtype=dtype,
                                capability=int(arch.name[3:]), limit=arch.shared_bytes,
                                estimate=None, through="cubin"))
    return out


def main() -> None:
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    work = jobs(full=os.environ.get("GRADRES_AOT_FULL") == "1")
    workers = int(os.environ.get("GRADRES_AOT_WORKERS", "2"))
    with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as pool:
        for result in pool.map(compile_one, work):
            print(json.dumps(result), flush=True)


if __name__ == "__main__":
    sys.path.insert(0, ROOT)
    main()


# ---- test side -----------------------------------------------------------------------------------
def test_kernels_compile_for_sm80_and_sm90_within_shared_memory():
    """Every kernel × covering config × dtype × arch compiles, with metadata.shared within the
    arch's limit and within the policy's estimate (module docstring: what is covered)."""
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET",)}
    env.update(TRITON_CACHE_DIR=tempfile.mkdtemp(prefix="gradres-aot-"), OMP_NUM_THREADS="1",
               TRITON_DEFAULT_FP_FUSION=env.get("TRITON_DEFAULT_FP_FUSION", "1"))
    env.pop("GRADRES_AUTOTUNE", None)
    proc = subprocess.run([sys.executable, os.path.abspath(__file__)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-4000:]
    results = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert results, proc.stderr[-4000:]
    kernels = {r["kernel"] for r in results}
    assert {"mlp_fused_fwd_kernel", "mlp_fused_bwd_kernel", "gemm_kernel"} <= kernels
    assert {n for names in ELEMENTWISE_KERNELS.values() for n in names} <= kernels
    problems = []
    for r in results:
        what = (f"{r['kernel']} {r['meta']} warps={r['num_warps']} stages={r['num_stages']} "
                f"{r['dtype']} sm_{r['capability']}")
        if "error" in r:
            problems.append(f"{what}: {r['error']}")
        elif r["shared"] > r["limit"]:
            problems.append(f"{what}: shared {r['shared']} B > limit {r['limit']} B")
        elif r["estimate"] is not None and r["shared"] > r["estimate"]:
            problems.append(f"{what}: shared {r['shared']} B > policy estimate {r['estimate']} B")
    assert not problems, "\n".join(problems)
