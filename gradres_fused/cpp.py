"""The `cpp` backend: the C++/CUDA custom ops gradres_fused::{mlp,conv}_{fwd,bwd} (csrc/).

This module gives the ops what torch.library needs from Python: fake (meta) kernels, so
torch.compile can trace them, and autograd. The forward's backward is the fused `*_bwd` op; the
`*_bwd` op's own backward is the composite implementation (`composite.recomputed_backward`, a VJP
taken by autograd), so a gradient of the backward — and any higher order — is exact, if slower.
"""
from __future__ import annotations

import importlib
from typing import Optional

import torch

from . import composite
from .activations import get_activation
from .blocks import FAMILIES

try:
    importlib.import_module("gradres_fused._C")  # loading the library registers the ops
    IMPORT_ERROR: Optional[str] = None
except ImportError as e:  # not built: the backend reports why instead of registering
    IMPORT_ERROR = f"the C++ extension gradres_fused._C is not built ({e})"

OPS = {"mlp": "mlp", "conv2d": "conv"}  # family -> op prefix


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


def _op(family: str, stage: str):
    return getattr(torch.ops.gradres_fused, f"{OPS[family]}_{stage}").default


def _hidden_shape(family: str, x, w1):
    return (x.shape[0], w1.shape[0]) if family == "mlp" else (x.shape[0], w1.shape[0],
                                                                *x.shape[2:])


def _register(family: str) -> None:
    fwd_name = f"gradres_fused::{OPS[family]}_fwd"
    bwd_name = f"gradres_fused::{OPS[family]}_bwd"
    fam = FAMILIES[family]

    @torch.library.register_fake(fwd_name)
    def _fwd_fake(x, w1, b1, w2, b2, alpha, activation, normalize, eps, detach):
        hidden = _hidden_shape(family, x, w1)
        return (x.new_empty(x.shape), x.new_empty(hidden), x.new_empty(hidden),
                x.new_empty(x.shape), x.new_empty((x.shape[0] if normalize else 0,)))

    @torch.library.register_fake(bwd_name)
    def _bwd_fake(y_bar, x, w1, b1, w2, alpha, z, a, g_hat, r, activation, normalize, eps,
                  detach):
        return (x.new_empty(x.shape), w1.new_empty(w1.shape), w1.new_empty((w1.shape[0],)),
                w2.new_empty(w2.shape), w2.new_empty((w2.shape[0],)),
                alpha.new_empty(alpha.shape))

    def _fwd_setup(ctx, inputs, output):
        x, w1, b1, w2, b2, alpha, activation, normalize, eps, detach = inputs
        _, z, a, g_hat, r = output
        ctx.save_for_backward(x, w1, b1, w2, alpha, z, a, g_hat, r)
        ctx.config = (activation, normalize, eps, detach)
        ctx.has_bias = (b1 is not None, b2 is not None)
        ctx.mark_non_differentiable(z, a, g_hat, r)
        ctx.set_materialize_grads(False)  # no zero-filled gradients for z, a, ĝ, r

    def _fwd_backward(ctx, y_bar, *_intermediate_grads):
        if y_bar is None:  # y unused downstream (grads are not materialized)
            return (None,) * 10
        x, w1, b1, w2, alpha, z, a, g_hat, r = ctx.saved_tensors
        grads = _op(family, "bwd")(y_bar, x, w1, b1, w2, alpha, z, a, g_hat, r, *ctx.config)
        x_bar, w1_bar, b1_bar, w2_bar, b2_bar, alpha_bar = grads
        return (x_bar, w1_bar, b1_bar if ctx.has_bias[0] else None, w2_bar,
                b2_bar if ctx.has_bias[1] else None, alpha_bar, None, None, None, None)

    torch.library.register_autograd(fwd_name, _fwd_backward, setup_context=_fwd_setup)

    def _bwd_setup(ctx, inputs, output):
        y_bar, x, w1, b1, w2, alpha, z, a, g_hat, r, activation, normalize, eps, detach = inputs
        ctx.save_for_backward(y_bar, x, w1, b1, w2, alpha)
        ctx.config = (activation, normalize, eps, detach)

    def _bwd_backward(ctx, *out_grads):
        """VJP of the fused backward through the composite formulas (torch.func.vjp treats the
        saved tensors as independent primals — ȳ may itself depend on x — and keeps the result
        differentiable for the next order)."""
        activation, normalize, eps, detach = ctx.config
        y_bar, x, w1, b1, w2, alpha = ctx.saved_tensors
        primals = (y_bar, x, w1, w2, alpha) + (() if b1 is None else (b1,))

        def fused_backward(y_bar, x, w1, w2, alpha, *maybe_b1):
            outs = composite.recomputed_backward(
                fam, get_activation(activation), y_bar, x, w1, maybe_b1[0] if maybe_b1 else None,
                w2, alpha, normalize, eps, detach,
                needs=(True, True, bool(maybe_b1), True, True, True))
            return tuple(torch.zeros_like(alpha) if o is None else o for o in outs)

        outs, vjp = torch.func.vjp(fused_backward, *primals)
        cotangents = tuple(torch.zeros_like(o) if g is None else g
                           for o, g in zip(outs, out_grads))
        grads = vjp(cotangents)
        by_input = (grads[0], grads[1], grads[2], grads[5] if b1 is not None else None,
                    grads[3], grads[4])
        needs = ctx.needs_input_grad[:6]
        return (*(g if n else None for g, n in zip(by_input, needs)),
                None, None, None, None, None, None, None, None)

    torch.library.register_autograd(bwd_name, _bwd_backward, setup_context=_bwd_setup)


if IMPORT_ERROR is None:
    for _family in OPS:
        _register(_family)


def gradres(family: str, x, w1, b1, w2, b2, alpha, *, activation, normalize, eps, detach):
    return _op(family, "fwd")(x, w1, b1, w2, b2, alpha, activation, normalize, float(eps),
                              detach)[0]


def gradres_mlp(x, w1, b1, w2, b2, alpha, **options):
    return gradres("mlp", x, w1, b1, w2, b2, alpha, **options)


def gradres_conv2d(x, w1, b1, w2, b2, alpha, **options):
    return gradres("conv2d", x, w1, b1, w2, b2, alpha, **options)
