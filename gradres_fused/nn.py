"""nn.Module front ends (docs/DESIGN.md §4).

State-dict keys do not depend on the backend: `fc1.*`, `fc2.*` (MLP), `conv1.*`, `conv2.*` (conv)
and `alpha` — a Parameter when learnable, a buffer when frozen, of shape (1,): FSDP2's
`fully_shard` refuses 0-d parameters. A state_dict saved with the earlier 0-d alpha still loads.

Arguments are checked at construction; a forward whose input does not match the module's dtype or
device says which module attribute differs and how to convert (`.to(...)` or autocast).
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from . import reference
from .activations import get_activation
from .backends import check_exportable
from .ops import gradres_conv2d, gradres_mlp
from .validation import (check_backend_name, check_bool, check_flags, check_module_input,
                         check_number, check_size)

ALPHA_SHAPE = (1,)


def _reshape_legacy_alpha(module, state_dict, prefix, *_):
    """A state_dict saved when alpha was 0-d loads into the shape-(1,) alpha."""
    key = prefix + "alpha"
    value = state_dict.get(key)
    if isinstance(value, Tensor) and value.dim() == 0:
        state_dict[key] = value.reshape(ALPHA_SHAPE)


class _AlphaMixin(nn.Module):
    def _init_gradres(self, activation: Optional[str], alpha_init: float, learn_alpha: bool,
                      normalize: bool, eps: float, detach: bool, device=None, dtype=None) -> None:
        """`activation` None: F is a wrapped module, not a block of the activation table."""
        if activation is not None:
            get_activation(activation)
        check_flags(normalize, eps, detach)
        check_number("alpha_init", alpha_init)
        check_bool("learn_alpha", learn_alpha)
        alpha = torch.full(ALPHA_SHAPE, float(alpha_init), device=device,
                           dtype=dtype or torch.get_default_dtype())
        if learn_alpha:
            self.alpha = nn.Parameter(alpha)
        else:
            self.register_buffer("alpha", alpha)
        self.normalize, self.eps, self.detach = normalize, float(eps), detach
        self.register_load_state_dict_pre_hook(_reshape_legacy_alpha)

    @property
    def mix(self) -> Tensor:
        """m = sigmoid(alpha), the weight of ĝ in the skip path."""
        return torch.sigmoid(self.alpha)

    def _gradres_repr(self) -> str:
        return (f"alpha={self.alpha.item():.4g}, learn_alpha={isinstance(self.alpha, nn.Parameter)}"
                f", normalize={self.normalize}, eps={self.eps:g}, detach={self.detach}")


class GradResMLP(_AlphaMixin):
    """y = fc2(φ(fc1(x))) + (1−m)·x + m·ĝ on x of shape (..., dim), each row a sample."""

    def __init__(self, dim: int, hidden: int, *, activation: str = "relu", alpha_init: float = 0.0,
                 learn_alpha: bool = True, normalize: bool = True, eps: float = 1e-6,
                 detach: bool = True, backend: str = "auto", bias: bool = True,
                 device=None, dtype=None):
        super().__init__()
        check_size("dim", dim)
        check_size("hidden", hidden)
        check_bool("bias", bias)
        check_backend_name(backend)
        self._init_gradres(activation, alpha_init, learn_alpha, normalize, eps, detach, device,
                           dtype)
        self.fc1 = nn.Linear(dim, hidden, bias=bias, device=device, dtype=dtype)
        self.fc2 = nn.Linear(hidden, dim, bias=bias, device=device, dtype=dtype)
        self.activation, self.backend = activation, backend

    def forward(self, x: Tensor) -> Tensor:
        check_module_input(self, x, "fc1.weight", self.fc1.weight)
        return gradres_mlp(x, self.fc1.weight, self.fc1.bias, self.fc2.weight, self.fc2.bias,
                           self.alpha, activation=self.activation, normalize=self.normalize,
                           eps=self.eps, detach=self.detach, backend=self.backend)

    def extra_repr(self) -> str:
        return f"activation={self.activation!r}, {self._gradres_repr()}, backend={self.backend!r}"


class GradResConv2d(_AlphaMixin):
    """EDSR-style block conv2(φ(conv1(x)))·res_scale with a gradient residual skip.

    res_scale is folded into conv2's weight and bias at call time, so the stored parameters are
    the unscaled ones, as in EDSR.
    """

    def __init__(self, channels: int, hidden_channels: Optional[int] = None, kernel_size: int = 3,
                 *, activation: str = "relu", res_scale: float = 1.0, alpha_init: float = 0.0,
                 learn_alpha: bool = True, normalize: bool = True, eps: float = 1e-6,
                 detach: bool = True, backend: str = "auto", bias: bool = True,
                 device=None, dtype=None):
        super().__init__()
        check_size("channels", channels)
        hidden_channels = channels if hidden_channels is None else hidden_channels
        check_size("hidden_channels", hidden_channels)
        check_size("kernel_size", kernel_size)
        if kernel_size % 2 == 0:
            raise ValueError(f"kernel_size: expected an odd positive int ('same' padding), "
                             f"got {kernel_size!r}")
        check_number("res_scale", res_scale)
        check_bool("bias", bias)
        check_backend_name(backend)
        self._init_gradres(activation, alpha_init, learn_alpha, normalize, eps, detach, device,
                           dtype)
        pad = kernel_size // 2
        self.conv1 = nn.Conv2d(channels, hidden_channels, kernel_size, padding=pad, bias=bias,
                               device=device, dtype=dtype)
        self.conv2 = nn.Conv2d(hidden_channels, channels, kernel_size, padding=pad, bias=bias,
                               device=device, dtype=dtype)
        self.activation, self.backend, self.res_scale = activation, backend, float(res_scale)

    def forward(self, x: Tensor) -> Tensor:
        check_module_input(self, x, "conv1.weight", self.conv1.weight)
        w2, b2 = self.conv2.weight, self.conv2.bias
        if self.res_scale != 1.0:
            w2 = w2 * self.res_scale
            b2 = None if b2 is None else b2 * self.res_scale
        return gradres_conv2d(x, self.conv1.weight, self.conv1.bias, w2, b2, self.alpha,
                              activation=self.activation, normalize=self.normalize,
                              eps=self.eps, detach=self.detach, backend=self.backend)

    def extra_repr(self) -> str:
        return (f"activation={self.activation!r}, res_scale={self.res_scale:g}, "
                f"{self._gradres_repr()}, backend={self.backend!r}")


class GradientResidual(_AlphaMixin):
    """Wraps any block F (input and output of the same shape) as F(x) + (1−m)·x + m·ĝ.

    Uses the reference math (autograd for g), so it works for any module; the sample is dim 0 and
    ĝ is normalized over all other dims. F must treat samples independently (no batch statistics).
    """

    def __init__(self, module: nn.Module, *, alpha_init: float = 0.0, learn_alpha: bool = True,
                 normalize: bool = True, eps: float = 1e-6, detach: bool = True):
        super().__init__()
        if not callable(module):
            raise TypeError(f"module: expected a callable nn.Module, got {type(module).__name__}")
        self.module = module
        self._init_gradres(None, alpha_init, learn_alpha, normalize, eps, detach)

    def forward(self, x: Tensor) -> Tensor:
        if not isinstance(x, Tensor) or not x.is_floating_point():
            raise TypeError("x: expected a floating torch.Tensor")
        if x.dim() < 1:
            raise ValueError("x: expected a batched tensor with the sample on dim 0, got a scalar")
        check_exportable("GradientResidual")
        return reference.gradient_residual(self.module, x, self.alpha.to(x.dtype),
                                           normalize=self.normalize, eps=self.eps,
                                           detach=self.detach)

    def extra_repr(self) -> str:
        return self._gradres_repr()
