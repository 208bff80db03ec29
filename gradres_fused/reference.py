"""The `reference` backend: the ground truth every other backend is tested against.

It knows nothing of the closed forms: it takes g = ∇_x ΣF(x) from autograd, with
`create_graph=not detach`, and uses torch's own activation functions rather than the project's
activation table, so the table is checked too.
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

_TORCH_ACTIVATIONS = {
    "relu": torch.relu,
    "gelu": F.gelu,
    "gelu_tanh": lambda z: F.gelu(z, approximate="tanh"),
    "silu": F.silu,
    "tanh": torch.tanh,
    "sin": torch.sin,
}


def gradient_residual(fn: Callable[[Tensor], Tensor], x: Tensor, alpha: Tensor, *,
                      normalize: bool, eps: float, detach: bool,
                      norm_dims: Optional[Sequence[int]] = None,
                      grad_fn: Optional[Callable[[Tensor], Tensor]] = None) -> Tensor:
    """y = F(x) + (1 − m)·x + m·ĝ with g = ∇_x ΣF(x) from autograd and m = sigmoid(alpha).

    `norm_dims` are the dimensions one sample spans (default: all but dim 0). F must act on each
    sample independently (no batch statistics), or ΣF mixes samples. `grad_fn`, called after `fn`
    on the same input, is the F whose Σ gives g (default: `fn`'s own output) — F with its batch
    statistics held constant for GradientResidual(batch_stats="frozen").
    """
    grad_mode = torch.is_grad_enabled()
    with torch.enable_grad():
        xin = x if x.requires_grad else x.detach().requires_grad_(True)
        fx = fn(xin)
        if fx.shape != x.shape:
            raise ValueError(f"module: a gradient residual needs F(x) shaped like x "
                             f"{tuple(x.shape)}, got {tuple(fx.shape)}")
        g = None
        fg = fx if grad_fn is None else grad_fn(xin)
        if fg.requires_grad:
            (g,) = torch.autograd.grad(fg.sum(), xin, create_graph=grad_mode and not detach,
                                       retain_graph=True, allow_unused=True)
        if g is None:  # F does not depend on x
            g = torch.zeros_like(x)
        if normalize:
            dims = tuple(range(1, x.dim())) if norm_dims is None else tuple(norm_dims)
            r = torch.sqrt(g.square().sum(dim=dims, keepdim=True) + eps * eps)
            g = g / r
        m = torch.sigmoid(alpha.reshape(()))  # one element of any shape: a scalar, y keeps x's shape
        y = fx + (1 - m) * x + m * g
    return y if grad_mode else y.detach()


def gradres_mlp(x, w1, b1, w2, b2, alpha, *, activation, normalize, eps, detach):
    act = _TORCH_ACTIVATIONS[activation]
    return gradient_residual(lambda t: F.linear(act(F.linear(t, w1, b1)), w2, b2), x, alpha,
                             normalize=normalize, eps=eps, detach=detach, norm_dims=(-1,))


def gradres_conv2d(x, w1, b1, w2, b2, alpha, *, activation, normalize, eps, detach):
    act = _TORCH_ACTIVATIONS[activation]
    p1 = (w1.shape[2] // 2, w1.shape[3] // 2)
    p2 = (w2.shape[2] // 2, w2.shape[3] // 2)
    return gradient_residual(
        lambda t: F.conv2d(act(F.conv2d(t, w1, b1, padding=p1)), w2, b2, padding=p2), x, alpha,
        normalize=normalize, eps=eps, detach=detach)
