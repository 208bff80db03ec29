"""The `composite` backend: docs/DESIGN.md §1–§2 in plain torch ops, differentiable to any order.

`forward_parts` and `backward_formulas` are the closed forms, written once over a block family
(`blocks.MLPFamily`, `blocks.Conv2dFamily`). `CompositeGradRes` wires them into an autograd.Function
whose backward is itself ordinary differentiable torch code: under `create_graph=True` it recomputes
the forward intermediates from the saved inputs, so a gradient of the backward (gradgradcheck, a
gradient penalty) is exact. The fused backends use `backward_formulas` as the backward of their own
backward op.
"""
from __future__ import annotations

from typing import NamedTuple, Optional, Tuple

import torch
from torch import Tensor

from .activations import Activation, get_activation
from .blocks import FAMILIES


class Parts(NamedTuple):
    """Forward intermediates the backward needs."""

    z: Tensor                 # pre-activation L1(x) + b1
    s: Tensor                 # s-map ∂ΣF/∂a: (H,) for MLP, (Cm, H, W) for conv
    d: Optional[Tensor]       # φ'(z) ⊙ s (the backward needs it only in second-order mode)
    g_hat: Tensor             # normalized input-gradient ĝ (or g when normalize=False)
    r: Optional[Tensor]       # per-sample sqrt(‖g‖² + eps²), None when normalize=False


def forward_parts(fam, act: Activation, x, w1, b1, w2, normalize: bool, eps: float) -> Parts:
    z = fam.lin1(x, w1, b1)
    s = fam.smap(w2, x)
    d = act.d1(z) * s
    g = fam.lin1_adjoint(d, w1)
    if not normalize:
        return Parts(z, s, d, g, None)
    r = torch.sqrt(fam.sample_dot(g, g) + eps * eps)
    return Parts(z, s, d, g / r, r)


def mix(f: Tensor, x: Tensor, g_hat: Tensor, alpha: Tensor) -> Tensor:
    """y = F + (1 − m)·x + m·ĝ, m = sigmoid(alpha)."""
    m = torch.sigmoid(alpha.reshape(()))
    return f + (1 - m) * x + m * g_hat


def backward_formulas(fam, act: Activation, y_bar: Tensor, x, w1, w2, alpha, parts: Parts,
                      detach: bool, needs=(True,) * 6) -> Tuple[Optional[Tensor], ...]:
    """(x̄, W̄1, b̄1, W̄2, b̄2, ᾱ) of docs/DESIGN.md §2; entries not in `needs` come back as None."""
    z, s, d, g_hat, r = parts
    m = torch.sigmoid(alpha.reshape(()))
    alpha_bar = None
    if needs[5]:
        # A full reduction that may cancel: accumulate in float64 (as the fused kernels do).
        total = torch.sum(y_bar * (g_hat - x), dtype=torch.float64).to(alpha.dtype)
        alpha_bar = (m * (1 - m) * total).reshape(alpha.shape)

    d1 = act.d1(z)
    a = act.fn(z)
    w2_bar = fam.lin2_weight_grad(a, y_bar, w2) if needs[3] else None
    b2_bar = fam.channel_sum(y_bar) if needs[4] else None
    z_bar = fam.lin2_adjoint(y_bar, w2) * d1

    if detach:
        w1_bar = fam.lin1_weight_grad(x, z_bar, w1) if needs[1] else None
    else:
        g_hat_bar = m * y_bar
        if r is None:
            g_bar = g_hat_bar
        else:
            g_bar = (g_hat_bar - g_hat * fam.sample_dot(g_hat, g_hat_bar)) / r
        d_bar = fam.lin1_no_bias(g_bar, w1)
        if not act.d2_is_zero:
            z_bar = z_bar + d_bar * s * act.d2(z)
        if needs[3]:
            w2_bar = w2_bar + fam.smap_adjoint((d_bar * d1).sum(0), w2)
        w1_bar = None
        if needs[1]:  # one GEMM over the stacked rows: [z̄; d]ᵀ [x; ḡ]
            w1_bar = fam.lin1_weight_grad(torch.cat([x, g_bar]), torch.cat([z_bar, d]), w1)

    x_bar = (1 - m) * y_bar + fam.lin1_adjoint(z_bar, w1) if needs[0] else None
    b1_bar = fam.channel_sum(z_bar) if needs[2] else None
    return x_bar, w1_bar, b1_bar, w2_bar, b2_bar, alpha_bar


def recomputed_backward(fam, act: Activation, y_bar, x, w1, b1, w2, alpha, normalize: bool,
                        eps: float, detach: bool, needs=(True,) * 6):
    """`backward_formulas` with the intermediates rebuilt from the inputs, all in differentiable
    ops: the gradient of the backward itself (double backward, gradient penalties) is exact. In
    detach mode ĝ is a stop-gradient feature, constant for every derivative order."""
    parts = forward_parts(fam, act, x, w1, b1, w2, normalize, eps)
    if detach:
        parts = parts._replace(g_hat=parts.g_hat.detach())
    return backward_formulas(fam, act, y_bar, x, w1, w2, alpha, parts, detach, needs)


class CompositeGradRes(torch.autograd.Function):
    """y for one block family; backward = `backward_formulas`, differentiable again."""

    @staticmethod
    def forward(ctx, x, w1, b1, w2, b2, alpha, family: str, activation: str, normalize: bool,
                eps: float, detach: bool):
        fam, act = FAMILIES[family], get_activation(activation)
        parts = forward_parts(fam, act, x, w1, b1, w2, normalize, eps)
        y = mix(fam.lin2(act.fn(parts.z), w2, b2), x, parts.g_hat, alpha)
        ctx.save_for_backward(x, w1, b1, w2, alpha, parts.z, parts.g_hat, parts.r)
        ctx.config = (family, activation, normalize, eps, detach)
        return y

    @staticmethod
    def backward(ctx, y_bar):
        x, w1, b1, w2, alpha, z, g_hat, r = ctx.saved_tensors
        family, activation, normalize, eps, detach = ctx.config
        fam, act = FAMILIES[family], get_activation(activation)
        needs = ctx.needs_input_grad[:6]
        if torch.is_grad_enabled():
            # create_graph: the saved z, ĝ carry no graph, so rebuild them from the saved inputs.
            grads = recomputed_backward(fam, act, y_bar, x, w1, b1, w2, alpha, normalize, eps,
                                        detach, needs)
        else:
            s = fam.smap(w2, x)
            parts = Parts(z, s, None if detach else act.d1(z) * s, g_hat, r)
            grads = backward_formulas(fam, act, y_bar, x, w1, w2, alpha, parts, detach, needs)
        return (*grads, None, None, None, None, None)


def gradres(family: str, x, w1, b1, w2, b2, alpha, *, activation, normalize, eps, detach):
    return CompositeGradRes.apply(x, w1, b1, w2, b2, alpha, family, activation, normalize,
                                  float(eps), detach)


def gradres_mlp(x, w1, b1, w2, b2, alpha, **options):
    """Rows are samples: x is (N, D) here (the dispatcher flattens leading dims)."""
    return gradres("mlp", x, w1, b1, w2, b2, alpha, **options)


def gradres_conv2d(x, w1, b1, w2, b2, alpha, **options):
    return gradres("conv2d", x, w1, b1, w2, b2, alpha, **options)
