"""Launch helpers shared by the kernel families: interpreter detection, dtype and dot-precision
constants, and autotuning that degrades to one fixed config under the interpreter."""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

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
    return max(floor, triton.next_power_of_2(max(int(n), 1)))


def num_programs(device: torch.device, tiles: int) -> int:
    """Persistent grid size: one program per SM on GPU (a handful under the interpreter, so the
    cross-program reduction is exercised by the tests)."""
    if device.type == "cuda":
        sms = torch.cuda.get_device_properties(device).multi_processor_count
    else:
        sms = 3
    return max(1, min(tiles, sms))


def tuned(configs, key, **autotune_options):
    """triton.autotune on GPU; under the interpreter, the first config applied as fixed meta
    parameters (autotuning would time every config with CUDA events)."""
    def wrap(kernel):
        if not INTERPRET:
            return triton.autotune(configs=configs, key=key, **autotune_options)(kernel)
        return triton.heuristics({k: (lambda v: (lambda args: v))(v)
                                  for k, v in configs[0].kwargs.items()})(kernel)
    return wrap
