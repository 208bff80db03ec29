"""The `cpp` backend: the C++/CUDA custom ops gradres_fused::{mlp,conv}_{fwd,bwd} (csrc/).

This module registers the ops' fake kernels and the backward op's autograd (gradres_fused.fused_op:
its backward is the composite implementation); the library registers the forward's autograd
itself, in C++ (csrc/autograd.cpp: the fused `*_bwd` op is its backward).
"""
from __future__ import annotations

import importlib
from typing import Optional

import torch

from . import fused_op

try:
    importlib.import_module("gradres_fused._C")  # loading the library registers the ops
    IMPORT_ERROR: Optional[str] = None
except ImportError as e:  # not built: the backend reports why instead of registering
    IMPORT_ERROR = f"the C++ extension gradres_fused._C is not built ({e})"



def built_with_cuda() -> bool:
    return IMPORT_ERROR is None and torch._C._dispatch_has_kernel_for_dispatch_key(
        "gradres_fused::mlp_fwd", "CUDA")


def unavailable(device: torch.device, dtype: torch.dtype) -> Optional[str]:
    if IMPORT_ERROR is not None:
        return IMPORT_ERROR
    if device.type == "cuda" and not built_with_cuda():
        return "gradres_fused._C was built without CUDA (rebuild with a CUDA toolkit or FORCE_CUDA=1)"
    if device.type not in ("cpu", "cuda"):
        return f"no kernels for device type {device.type!r}"
    return None


def native_low_precision(device: torch.device) -> bool:
    """CUDA kernels take float16/bfloat16 with float32 accumulation; on CPU the dispatcher runs
    them on float32 copies."""
    return device.type == "cuda"


def _sample_format(x: torch.Tensor) -> torch.memory_format:
    """The memory format of the ops' per-sample outputs y and x̄: channels_last when x is (and is
    not also contiguous), contiguous otherwise — csrc/blocks.h's sample_format."""
    if (x.dim() == 4 and not x.is_contiguous()
            and x.is_contiguous(memory_format=torch.channels_last)):
        return torch.channels_last
    return torch.contiguous_format


def _empty_like_x(x: torch.Tensor) -> torch.Tensor:
    """y and x̄ like x, a weight's gradient like the weight: in _sample_format."""
    return torch.empty(x.shape, dtype=x.dtype, device=x.device, memory_format=_sample_format(x))


# The activations whose block keeps its output a = φ(z) for the backward instead of z
# (csrc/activations.h ActOps::kSavesOutput: φ' and φ'' read the same off a; tests/test_cpp.py
# checks this set against the ops for every activation).
SAVES_OUTPUT = frozenset({"relu"})


def _fake_saved(family: str):
    """One of z and a is hidden-shaped — a for an activation in SAVES_OUTPUT, z otherwise — and
    the other a one-element placeholder (csrc/blocks.h block_fwd); ĝ like x; the hidden-shaped
    one and ĝ in x's format (the block computes in it: csrc/blocks.h's Fam::work_format); r one
    per sample (empty unless normalize) in fused_op.norm_dtype."""
    def saved(x, w1, normalize, activation):
        hidden = ((x.shape[0], w1.shape[0]) if family == "mlp"
                  else (x.shape[0], w1.shape[0], *x.shape[2:]))
        fmt = _sample_format(x)

        def empty(shape):
            return torch.empty(shape, dtype=x.dtype, device=x.device, memory_format=fmt)
        kept, placeholder = empty(hidden), x.new_empty((1,))
        z, a = (placeholder, kept) if activation in SAVES_OUTPUT else (kept, placeholder)
        return (z, a, empty(x.shape),
                x.new_empty((x.shape[0] if normalize else 0,), dtype=fused_op.norm_dtype(x.dtype)))
    return saved


if IMPORT_ERROR is None:
    for _family in ("mlp", "conv2d"):
        fused_op.register(*fused_op.OP_NAMES["cpp", _family], _family,
                          _fake_saved(_family), fake_like_x=_empty_like_x,
                          fake_like_w=_empty_like_x, fwd_autograd=False,
                          saved_by_activation=True)


def gradres_mlp(x, w1, b1, w2, b2, alpha, **options):
    return fused_op.call(fused_op.OP_NAMES["cpp", "mlp"][0], x, w1, b1, w2, b2, alpha, **options)


def gradres_conv2d(x, w1, b1, w2, b2, alpha, **options):
    return fused_op.call(fused_op.OP_NAMES["cpp", "conv2d"][0], x, w1, b1, w2, b2, alpha, **options)
