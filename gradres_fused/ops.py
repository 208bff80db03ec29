"""Public functional API (docs/DESIGN.md §4): validate, choose a backend, run it."""
from __future__ import annotations

from contextlib import nullcontext
from typing import Optional

import torch
from torch import Tensor

from .backends import Backend, get_backend
from .validation import LOW_PRECISION, AlphaLike, check_conv2d, check_mlp


def _autocast(tensors):
    """Under torch.autocast the block is a lower-precision op, like nn.Linear: floating inputs are
    cast to the autocast dtype (autograd casts their gradients back). Computation then follows
    the low-precision rule (float32 accumulation) with autocast off inside, so no op of a
    backend is recast behind its back."""
    x = tensors[0]
    if not isinstance(x, Tensor) or not x.is_floating_point():
        return tensors, False
    device = x.device.type
    try:
        enabled = torch.is_autocast_enabled(device)
    except RuntimeError:  # a device type autocast does not know (meta, …): validation reports it
        return tensors, False
    if not enabled:
        return tensors, False
    dtype = torch.get_autocast_dtype(device)
    return [t.to(dtype) if isinstance(t, Tensor) and t.is_floating_point() else t
            for t in tensors], True


def _run(impl, backend: Backend, x: Tensor, w1, b1, w2, b2, alpha: Tensor, **options) -> Tensor:
    if x.dtype in LOW_PRECISION and not backend.native_low_precision(x.device):
        # Accumulate in float32: run on float32 copies; autograd casts the gradients back.
        up = [None if t is None else t.float() for t in (x, w1, b1, w2, b2, alpha)]
        return impl(*up, **options).to(x.dtype)
    return impl(x, w1, b1, w2, b2, alpha, **options)


def _autocast_off(x: Tensor, autocasting: bool):
    return torch.autocast(x.device.type, enabled=False) if autocasting else nullcontext()


def gradres_mlp(x: Tensor, w1: Tensor, b1: Optional[Tensor], w2: Tensor, b2: Optional[Tensor],
                alpha: AlphaLike, *, activation: str = "relu", normalize: bool = True,
                eps: float = 1e-6, detach: bool = True, backend: str = "auto") -> Tensor:
    """Gradient residual MLP block y = F(x) + (1−m)·x + m·ĝ, F(x) = φ(x W1ᵀ + b1) W2ᵀ + b2.

    x: (..., D), every row a sample; w1: (H, D); b1: (H,) or None; w2: (D, H); b2: (D,) or None;
    alpha: the mixing logit (one-element tensor or float), m = sigmoid(alpha).
    detach=True treats ĝ as a stop-gradient feature; False back-propagates through it (second order).
    """
    (x, w1, b1, w2, b2, alpha), autocasting = _autocast([x, w1, b1, w2, b2, alpha])
    alpha = check_mlp(x, w1, b1, w2, b2, alpha, activation, normalize, eps, detach)
    b = get_backend(backend, x.device, x.dtype)
    with _autocast_off(x, autocasting):
        y = _run(b.mlp, b, x.reshape(-1, x.shape[-1]), w1, b1, w2, b2, alpha,
                 activation=activation, normalize=normalize, eps=eps, detach=detach)
    return y.reshape(x.shape)


def gradres_conv2d(x: Tensor, w1: Tensor, b1: Optional[Tensor], w2: Tensor, b2: Optional[Tensor],
                   alpha: AlphaLike, *, activation: str = "relu", normalize: bool = True,
                   eps: float = 1e-6, detach: bool = True, backend: str = "auto") -> Tensor:
    """Gradient residual conv block, F(x) = conv(φ(conv(x, W1, b1)), W2, b2), 'same' padding.

    x: (N, C, H, W), one sample per (C, H, W) slab; w1: (Cm, C, k1, k1); w2: (C, Cm, k2, k2), odd
    kernels; b1: (Cm,) or None; b2: (C,) or None. Other arguments as in `gradres_mlp`.
    """
    (x, w1, b1, w2, b2, alpha), autocasting = _autocast([x, w1, b1, w2, b2, alpha])
    alpha = check_conv2d(x, w1, b1, w2, b2, alpha, activation, normalize, eps, detach)
    b = get_backend(backend, x.device, x.dtype)
    with _autocast_off(x, autocasting):
        return _run(b.conv2d, b, x, w1, b1, w2, b2, alpha,
                    activation=activation, normalize=normalize, eps=eps, detach=detach)
