"""What torch.library needs from Python for a pair of fused ops `<prefix>_fwd` / `<prefix>_bwd`
(shared by the cpp and triton backends, which register ops of the same schemas):

    fwd(x, w1, b1?, w2, b2?, alpha, activation, normalize, eps, detach) -> (y, z, a, ĝ, r)
    bwd(ȳ, x, w1, b1?, w2, alpha, z, a, ĝ, r, activation, normalize, eps, detach)
        -> (x̄, W̄1, b̄1, W̄2, b̄2, ᾱ)

z, a, ĝ, r are what the backend's backward reads (a backend that recomputes them returns
placeholders: the cpp ops keep only one of z and a, by activation, docs/DESIGN.md §2 memory); autograd never differentiates them. r, the per-sample norms, is kept in the accumulation
type (`norm_dtype`), not in x's: a bfloat16 r alone would cost up to 2⁻⁹ relative error in ḡ. Fake (meta) kernels let torch.compile trace the ops.
The forward's backward is the fused bwd op; the bwd op's own backward is the composite
implementation (`composite.recomputed_backward`, a VJP taken by autograd), so a gradient of the
backward — and any higher order — is exact, if slower.
"""
from __future__ import annotations

from typing import Callable

import torch

from . import composite
from .activations import get_activation
from .blocks import FAMILIES

FWD_SCHEMA = ("(Tensor x, Tensor w1, Tensor? b1, Tensor w2, Tensor? b2, Tensor alpha, "
              "str activation, bool normalize, float eps, bool detach) "
              "-> (Tensor, Tensor, Tensor, Tensor, Tensor)")
BWD_SCHEMA = ("(Tensor y_bar, Tensor x, Tensor w1, Tensor? b1, Tensor w2, Tensor alpha, "
              "Tensor z, Tensor a, Tensor g_hat, Tensor r, str activation, bool normalize, "
              "float eps, bool detach) -> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)")


def norm_dtype(dtype: torch.dtype) -> torch.dtype:
    """dtype of the saved norms r for inputs of `dtype`: float64 for float64, float32 otherwise."""
    return torch.float64 if dtype == torch.float64 else torch.float32


# Every fused op pair, (backend, family) -> (forward op, backward op), written out in full so a
# search for an op name lands here. The cpp ops are defined in csrc/ops.cpp (same schemas;
# tests/test_cpp.py checks they agree with FWD_SCHEMA/BWD_SCHEMA), the triton ops by
# triton_backend from FWD_SCHEMA/BWD_SCHEMA.
OP_NAMES = {
    ("cpp", "mlp"): ("gradres_fused::mlp_fwd", "gradres_fused::mlp_bwd"),
    ("cpp", "conv2d"): ("gradres_fused::conv_fwd", "gradres_fused::conv_bwd"),
    ("triton", "mlp"): ("gradres_fused::triton_mlp_fwd", "gradres_fused::triton_mlp_bwd"),
    ("triton", "conv2d"): ("gradres_fused::triton_conv_fwd", "gradres_fused::triton_conv_bwd"),
}

def op(qualname: str):
    namespace, name = qualname.split("::")
    return getattr(getattr(torch.ops, namespace), name).default


def _empty_contiguous_like(x):
    return x.new_empty(x.shape)


def register(fwd_name: str, bwd_name: str, family: str, fake_saved: Callable,
             fake_like_x: Callable = _empty_contiguous_like,
             fake_like_w: Callable = _empty_contiguous_like, fwd_autograd: bool = True,
             saved_by_activation: bool = False) -> None:
    """Fake kernels and autograd for one fwd/bwd pair. `fake_saved(x, w1, normalize)` returns
    empty tensors like the forward's (z, a, ĝ, r) (`fake_saved(x, w1, normalize, activation)` with
    `saved_by_activation`: what the forward keeps depends on the activation, as in the cpp
    backend's); `fake_like_x(x)` an empty tensor laid out like
    the op's y and x̄ (contiguous unless the backend keeps x's memory format); `fake_like_w(w)`
    one laid out like the op's gradient of weight w (contiguous unless the backend keeps w's).
    `fwd_autograd=False`: the forward's autograd (the bwd op as its backward, as below) is
    registered by the backend itself — the cpp library does it in C++ (csrc/autograd.cpp), which
    costs a fraction of this Python path per call; the bwd op's autograd is registered here."""
    fam = FAMILIES[family]

    @torch.library.register_fake(fwd_name)
    def _fwd_fake(x, w1, b1, w2, b2, alpha, activation, normalize, eps, detach):
        saved = (fake_saved(x, w1, normalize, activation) if saved_by_activation
                 else fake_saved(x, w1, normalize))
        return (fake_like_x(x), *saved)

    @torch.library.register_fake(bwd_name)
    def _bwd_fake(y_bar, x, w1, b1, w2, alpha, z, a, g_hat, r, activation, normalize, eps,
                  detach):
        return (fake_like_x(x), fake_like_w(w1), w1.new_empty((w1.shape[0],)),
                fake_like_w(w2), w2.new_empty((w2.shape[0],)),
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
        grads = op(bwd_name)(y_bar, x, w1, b1, w2, alpha, z, a, g_hat, r, *ctx.config)
        x_bar, w1_bar, b1_bar, w2_bar, b2_bar, alpha_bar = grads
        return (x_bar, w1_bar, b1_bar if ctx.has_bias[0] else None, w2_bar,
                b2_bar if ctx.has_bias[1] else None, alpha_bar, None, None, None, None)

    if fwd_autograd:
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


def call(fwd_name: str, x, w1, b1, w2, b2, alpha, *, activation, normalize, eps, detach):
    return op(fwd_name)(x, w1, b1, w2, b2, alpha, activation, normalize, float(eps), detach)[0]
