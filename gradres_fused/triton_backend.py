"""The `triton` backend: custom ops gradres_fused::triton_{mlp,conv}_{fwd,bwd} over the Triton
kernels in gradres_fused.kernels (docs/DESIGN.md §3), same schemas as the cpp ops (fused_op).

MLP rows take one of two kernel paths, chosen from (D, H, dtype, device) so fake and real kernels
agree:
- "fused": D, H ≤ 128 and a row tile fits the device's shared memory — the whole block in one
  kernel per row tile (kernels/mlp_fused.py); the forward stores only y and the backward
  recomputes z, a, ĝ from x;
- "tiled": GEMMs with fused epilogues (kernels/gemm.py); the forward keeps z, ĝ, r (a = φ(z)
  is rebuilt by the backward's z̄ epilogue), so the op saves x, one hidden-sized tensor, ĝ and r,
  as `composite` does (the conv path likewise; tests/test_saved_bytes.py counts them).
GRADRES_TRITON_MLP=fused|tiled|auto overrides the choice (benchmarks, tests of both paths). The
forward decides once and its saved tensors record the decision (`saved_path`): the backward reads
it from there, never from the environment, so a forward and its backward always agree.

Launch configs come from the launch policy (kernels/policy.py; GRADRES_AUTOTUNE=1 to autotune).

Triton runs on CUDA devices. On CPU it runs only under its interpreter (TRITON_INTERPRET=1 set
before gradres_fused is imported): slow, for the test suite; `auto` never picks it there.
Float64 works in the interpreter (gradcheck); on CUDA the kernels take float32/float16/bfloat16.
"""
from __future__ import annotations

import os
from typing import Optional

import torch

from . import fused_op

try:
    from .kernels import common, conv, gemm, mlp_fused
    IMPORT_ERROR: Optional[str] = None
except ImportError as e:
    IMPORT_ERROR = f"Triton is not importable ({e}); pip install triton"

PATH_VAR = "GRADRES_TRITON_MLP"


def mlp_path(dim: int, hidden: int, dtype: torch.dtype = torch.float32,
             device: torch.device = torch.device("cpu")) -> str:
    """'fused' or 'tiled' for an MLP block of width D = dim, H = hidden in `dtype` on `device`.
    Called by the forward only (real and fake kernels); the backward uses `saved_path`."""
    choice = os.environ.get(PATH_VAR, "auto").strip() or "auto"
    if choice not in ("auto", "fused", "tiled"):
        raise ValueError(f"{PATH_VAR}: expected 'auto', 'fused' or 'tiled', got {choice!r}")
    fits = mlp_fused.fits(dim, hidden, dtype, device)
    if choice == "fused" and not fits:
        raise ValueError(f"{PATH_VAR}=fused: the fused MLP kernel takes D, H ≤ "
                         f"{mlp_fused.MAX_WIDTH} with a row tile in the device's shared memory, "
                         f"got D={dim}, H={hidden}, {dtype}")
    if choice == "auto":
        return "fused" if fits else "tiled"
    return choice


def saved_path(z: torch.Tensor) -> str:
    """The path the forward took, read from what it saved: the fused forward saves 1-D
    placeholders (`_empty`), the tiled one z of shape (N, H)."""
    return "fused" if z.dim() == 1 else "tiled"


def interpreted() -> bool:
    return IMPORT_ERROR is None and common.INTERPRET


def unavailable(device: torch.device, dtype: torch.dtype) -> Optional[str]:
    if IMPORT_ERROR is not None:
        return IMPORT_ERROR
    if device.type == "cuda":
        if dtype == torch.float64 and not interpreted():
            return ("the Triton kernels take float32, float16 or bfloat16 on CUDA (float64: "
                    "backend 'cpp' or 'composite')")
        return None
    if device.type == "cpu":
        if interpreted():
            return None
        return ("Triton kernels need a CUDA device; on CPU they run only under the Triton "
                "interpreter (TRITON_INTERPRET=1 before importing gradres_fused; slow, for tests)")
    return f"no Triton kernels for device type {device.type!r}"


def native_low_precision(device: torch.device) -> bool:
    """float16/bfloat16 go to the kernels as they are on CUDA (tensor-core dots, float32
    accumulation); the interpreter gets float32 copies."""
    return device.type == "cuda"


def auto_ok(device: torch.device) -> bool:
    """`auto` picks triton on CUDA only: the interpreter is a test tool, not a CPU backend."""
    return device.type == "cuda"


def _empty(x):
    """Placeholder for an intermediate the fused path does not keep. One element, not zero:
    zero-size tensors share a null data pointer and would read as aliased outputs."""
    return x.new_zeros((1,))


def _mlp_saved(x, w1, normalize):
    n, dim = x.shape
    hidden = w1.shape[0]
    if mlp_path(dim, hidden, x.dtype, x.device) == "fused":  # the backward recomputes: placeholders
        return _empty(x), _empty(x), _empty(x), _empty(x)
    return (x.new_empty((n, hidden)), _empty(x), x.new_empty((n, dim)),
            x.new_empty((n if normalize else 0,), dtype=common.acc_torch_dtype(x.dtype)))


def _conv_saved(x, w1, normalize):
    hidden = (x.shape[0], w1.shape[0], *x.shape[2:])
    return (x.new_empty(hidden), _empty(x), x.new_empty(x.shape),
            x.new_empty((x.shape[0] if normalize else 0,), dtype=common.acc_torch_dtype(x.dtype)))


def _mlp_fwd(x, w1, b1, w2, b2, alpha, activation, normalize, eps, detach):
    if mlp_path(x.shape[1], w1.shape[0], x.dtype, x.device) == "fused":
        y = mlp_fused.mlp_fwd(x, w1, b1, w2, b2, alpha, activation, normalize, eps)
        return (y, _empty(x), _empty(x), _empty(x), _empty(x))
    y, z, g_hat, r = gemm.mlp_fwd(x, w1, b1, w2, b2, alpha, activation, normalize, eps)
    return y, z, _empty(x), g_hat, r  # a: rebuilt by the backward


def _mlp_bwd(y_bar, x, w1, b1, w2, alpha, z, a, g_hat, r, activation, normalize, eps, detach):
    if saved_path(z) == "fused":
        return mlp_fused.mlp_bwd(y_bar, x, w1, b1, w2, alpha, activation, normalize, eps, detach)
    return gemm.mlp_bwd(y_bar, x, w1, b1, w2, alpha, z, g_hat, r, activation, normalize, detach)


def _conv_fwd(x, w1, b1, w2, b2, alpha, activation, normalize, eps, detach):
    y, z, g_hat, r = conv.conv_fwd(x, w1, b1, w2, b2, alpha, activation, normalize, eps)
    return y, z, _empty(x), g_hat, r  # a: rebuilt by the backward


def _conv_bwd(y_bar, x, w1, b1, w2, alpha, z, a, g_hat, r, activation, normalize, eps, detach):
    return conv.conv_bwd(y_bar, x, w1, b1, w2, alpha, z, g_hat, r, activation, normalize, detach)


_LIB = None
if IMPORT_ERROR is None:
    _LIB = torch.library.Library("gradres_fused", "FRAGMENT")
    for _family, _impls, _saved in (("mlp", (_mlp_fwd, _mlp_bwd), _mlp_saved),
                                    ("conv2d", (_conv_fwd, _conv_bwd), _conv_saved)):
        _names = fused_op.OP_NAMES["triton", _family]
        for _qualname, _schema, _impl in zip(_names, (fused_op.FWD_SCHEMA, fused_op.BWD_SCHEMA),
                                             _impls):
            _op_name = _qualname.split("::")[1]
            _LIB.define(_op_name + _schema)
            for _key in ("CPU", "CUDA"):
                _LIB.impl(_op_name, _impl, _key)
        fused_op.register(*_names, _family, _saved)


def gradres_mlp(x, w1, b1, w2, b2, alpha, **options):
    return fused_op.call(fused_op.OP_NAMES["triton", "mlp"][0], x, w1, b1, w2, b2, alpha, **options)


def gradres_conv2d(x, w1, b1, w2, b2, alpha, **options):
    return fused_op.call(fused_op.OP_NAMES["triton", "conv2d"][0], x, w1, b1, w2, b2, alpha, **options)
