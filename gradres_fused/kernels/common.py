"""Launch helpers shared by the kernel families: interpreter detection, dtype and dot-precision
constants, and the launch policy's glue to Triton (kernels/policy.py decides; this applies)."""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from . import policy

# triton.jit reads TRITON_INTERPRET when a kernel is decorated, i.e. when this package is imported.
INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"

_TL_DTYPE = {torch.float32: tl.float32, torch.float64: tl.float64,
             torch.float16: tl.float16, torch.bfloat16: tl.bfloat16}


def acc_torch_dtype(dtype: torch.dtype) -> torch.dtype:
    """Accumulation type: float64 stays float64 (interpreter only); everything else float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def acc_dtype(dtype: torch.dtype):
    """acc_torch_dtype as a Triton type, for the kernels' ACC parameter."""
    return _TL_DTYPE[acc_torch_dtype(dtype)]


def alpha_grad(alpha: torch.Tensor, total: torch.Tensor) -> torch.Tensor:
    """ᾱ = m(1−m)·Σ ȳ(ĝ − x) from the float64 total, in alpha's shape and dtype."""
    m = torch.sigmoid(alpha.detach().double().reshape(()))
    return (m * (1 - m) * total).reshape(alpha.shape).to(alpha.dtype)


def dot_precision(dtype: torch.dtype):
    """tl.dot input precision. float32 operands: TF32 only when the user allows it through torch's
    matmul precision setting (torch.backends.cuda.matmul.allow_tf32 /
    set_float32_matmul_precision), IEEE otherwise; float64 (interpreter): IEEE; float16/bfloat16:
    None (Triton's default; the setting only concerns float32 operands)."""
    if dtype == torch.float32:
        tf32 = not INTERPRET and torch.backends.cuda.matmul.allow_tf32
        return "tf32" if tf32 else "ieee"
    return "ieee" if dtype == torch.float64 else None


def pow2(n: int, floor: int = 16) -> int:
    """Block extent covering n: a power of two ≥ 16 (tl.dot's smallest tile on NVIDIA GPUs)."""
    return policy.pow2(n, floor)


def arch(device: torch.device) -> policy.Arch:
    """The launch policy's view of `device` (the interpreter's on CPU)."""
    return policy.device_arch(device, INTERPRET)


def num_programs(device: torch.device, tiles: int) -> int:
    """Persistent grid size on a GPU: policy.PERSISTENT_PROGRAMS (or one per tile if fewer),
    a constant, so the per-program partial sums — and so the weight gradients — are bitwise the
    same on every GPU; six under the interpreter, so the cross-program reduction is exercised by
    the tests."""
    a = arch(device)
    return max(1, min(tiles, policy.PERSISTENT_PROGRAMS if a.gpu else 2 * a.sm_count))


def launch_options(config: policy.Config) -> dict:
    """A policy Config as kernel launch keywords (constexpr blocks, num_warps, num_stages)."""
    return dict(config.kwargs, num_warps=config.num_warps, num_stages=config.num_stages)


def autotuned(kernel_name: str, key, prune, **autotune_options):
    """GRADRES_AUTOTUNE=1 (and not the interpreter): triton.autotune over the policy's candidates
    for `kernel_name`, keyed on `key` (row buckets, never exact row counts), pruned by `prune`
    (shape and the device's shared memory), timings cached on disk (`cache_results`, Triton ≥ 3.4).
    Otherwise the kernel is returned as it is and every launch passes the policy's config."""
    def wrap(kernel):
        if not AUTOTUNE:
            return kernel
        configs = [triton.Config(c.kwargs, num_warps=c.num_warps, num_stages=c.num_stages)
                   for c in policy.candidates(kernel_name)]
        return triton.autotune(configs=configs, key=key,
                               prune_configs_by={"early_config_prune": prune},
                               cache_results=True, **autotune_options)(kernel)
    return wrap


# The interpreter times nothing (no CUDA events): autotuning is a GPU-only opt-in.
AUTOTUNE = policy.AUTOTUNE and not INTERPRET
