"""Argument checks shared by every entry point (docs/DESIGN.md §4).

Bad input raises TypeError (wrong kind of object or dtype) or ValueError (wrong shape, rank, device,
value) naming the argument and what was expected, before any backend runs.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence, Union

import torch
from torch import Tensor

from .activations import get_activation
from .backends import KNOWN

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
LOW_PRECISION = (torch.float16, torch.bfloat16)

AlphaLike = Union[Tensor, float, int]


def _check_tensor(name: str, t, dtype: Optional[torch.dtype] = None, device=None) -> Tensor:
    if not isinstance(t, Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name}: expected a floating tensor (float16, bfloat16, float32 or "
                        f"float64), got dtype {t.dtype}")
    if dtype is not None and t.dtype != dtype:
        raise TypeError(f"{name}: expected dtype {dtype} to match x, got {t.dtype}")
    if device is not None and t.device != device:
        raise ValueError(f"{name}: expected a tensor on {device} like x, got one on {t.device}")
    return t


def _check_shape(name: str, t: Tensor, shape: Sequence[int], what: str) -> None:
    if tuple(t.shape) != tuple(shape):
        raise ValueError(f"{name}: expected shape {tuple(shape)} ({what}), got {tuple(t.shape)}")


def check_options(activation, normalize, eps, detach) -> None:
    get_activation(activation)
    check_flags(normalize, eps, detach)


def check_flags(normalize, eps, detach) -> None:
    check_bool("normalize", normalize)
    check_bool("detach", detach)
    if isinstance(eps, bool) or not isinstance(eps, (int, float)):
        raise TypeError(f"eps: expected a float, got {type(eps).__name__}")
    if not math.isfinite(eps) or eps < 0:
        raise ValueError(f"eps: expected a finite number >= 0, got {eps!r}")


def check_bool(name: str, flag) -> None:
    if not isinstance(flag, bool):
        raise TypeError(f"{name}: expected a bool, got {type(flag).__name__}")


def check_size(name: str, size) -> None:
    """A layer width or kernel size: a positive int (bool and float are refused)."""
    if isinstance(size, bool) or not isinstance(size, int):
        raise TypeError(f"{name}: expected a positive int, got {type(size).__name__} {size!r}")
    if size < 1:
        raise ValueError(f"{name}: expected a positive int, got {size}")


def check_number(name: str, value) -> None:
    """A finite real number (int or float, not bool)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name}: expected a float, got {type(value).__name__} {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{name}: expected a finite number, got {value!r}")


def check_backend_name(backend) -> None:
    """At construction: 'auto' or a backend of docs/DESIGN.md §3. Whether it can run is only known
    once the input's device and dtype are (a module may be built on CPU and moved to CUDA)."""
    if not isinstance(backend, str):
        raise TypeError(f"backend: expected a str, got {type(backend).__name__}")
    if backend != "auto" and backend not in KNOWN:
        raise ValueError(f"backend: unknown backend {backend!r}; expected 'auto' or one of "
                         f"{list(KNOWN)}")


def check_module_input(module, x, attr: str, param: Tensor) -> None:
    """x against the dtype and device of a module's weights, with the fix in the message.

    Under torch.autocast the functional API casts the inputs itself, so only the device is
    checked there."""
    if not isinstance(x, Tensor):
        raise TypeError(f"x: expected a torch.Tensor, got {type(x).__name__}")
    cls = type(module).__name__
    if x.device != param.device:
        raise ValueError(f"x: {cls} got an input on {x.device} but its parameters ({attr}, …) "
                         f"are on {param.device}; move one to the other's device, e.g. "
                         f"module.to({str(x.device)!r})")
    _check_module_shape(cls, x, attr, param)
    autocasting = False
    try:
        autocasting = torch.is_autocast_enabled(x.device.type)
    except RuntimeError:  # a device type autocast does not know: the functional API reports it
        pass
    if not autocasting and x.is_floating_point() and x.dtype != param.dtype:
        raise TypeError(f"x: {cls} got an input of dtype {x.dtype} but its parameters ({attr}, …) "
                        f"are {param.dtype}; convert the module with module.to({x.dtype}), the "
                        f"input with x.to({param.dtype}), or run it under torch.autocast")


def _check_module_shape(cls: str, x: Tensor, attr: str, param: Tensor) -> None:
    """x's width (MLP) or channels (conv) against the module's, named by the module's own
    constructor arguments (`dim`, `channels`) rather than the weights the functional API sees."""
    if attr == "fc1.weight":
        dim = param.shape[1]
        if x.dim() == 0 or x.shape[-1] != dim:
            got = "a 0-d tensor" if x.dim() == 0 else f"an input of width {x.shape[-1]}"
            raise ValueError(f"x: {cls}(dim={dim}) got {got} (x.shape = {tuple(x.shape)}); "
                             f"expected x of shape (..., {dim})")
    elif attr == "conv1.weight":
        channels = param.shape[1]
        if x.dim() != 4:
            raise ValueError(f"x: {cls}(channels={channels}) expects x of shape (N, {channels}, "
                             f"H, W), got a {x.dim()}-d tensor of shape {tuple(x.shape)}")
        if x.shape[1] != channels:
            raise ValueError(f"x: {cls}(channels={channels}) got an input with {x.shape[1]} "
                             f"channels (x.shape = {tuple(x.shape)}); expected x of shape "
                             f"(N, {channels}, H, W)")


def check_alpha(alpha: AlphaLike, x: Tensor) -> Tensor:
    """alpha as a one-element tensor of x's dtype and device (a Python number is accepted)."""
    if isinstance(alpha, bool):
        raise TypeError("alpha: expected a one-element floating tensor or a float, got bool")
    if isinstance(alpha, (int, float)):
        return torch.tensor(float(alpha), dtype=x.dtype, device=x.device)
    # Any one-element shape (a module's alpha is (1,)); every backend returns ᾱ in alpha's shape.
    _check_tensor("alpha", alpha, x.dtype, x.device)
    if alpha.numel() != 1:
        raise ValueError(f"alpha: expected one element (a scalar logit), got shape "
                         f"{tuple(alpha.shape)}")
    return alpha


def _check_common(x: Tensor, w1, b1, w2, b2):
    _check_tensor("x", x)
    if x.device.type == "meta":
        raise ValueError("x: meta tensors are not supported; pass real tensors")
    for name, t in (("w1", w1), ("w2", w2)):
        _check_tensor(name, t, x.dtype, x.device)
    for name, t in (("b1", b1), ("b2", b2)):
        if t is not None:
            _check_tensor(name, t, x.dtype, x.device)


def check_mlp(x: Tensor, w1, b1, w2, b2, alpha, activation, normalize, eps, detach) -> Tensor:
    """Validate gradres_mlp arguments; returns alpha as a tensor."""
    _check_common(x, w1, b1, w2, b2)
    check_options(activation, normalize, eps, detach)
    if x.dim() < 1:
        raise ValueError("x: expected shape (..., D) with at least one dimension, got a scalar")
    if w1.dim() != 2:
        raise ValueError(f"w1: expected shape (H, D), got {tuple(w1.shape)}")
    hidden, dim = w1.shape
    if dim != x.shape[-1]:
        raise ValueError(f"w1: expected shape (H, D) with D = x.shape[-1] = {x.shape[-1]}, "
                         f"got {tuple(w1.shape)}")
    _check_shape("w2", w2, (dim, hidden), "(D, H): nn.Linear weight of the second layer")
    if b1 is not None:
        _check_shape("b1", b1, (hidden,), "(H,)")
    if b2 is not None:
        _check_shape("b2", b2, (dim,), "(D,)")
    return check_alpha(alpha, x)


def check_conv2d(x: Tensor, w1, b1, w2, b2, alpha, activation, normalize, eps, detach) -> Tensor:
    """Validate gradres_conv2d arguments; returns alpha as a tensor."""
    _check_common(x, w1, b1, w2, b2)
    check_options(activation, normalize, eps, detach)
    if x.dim() != 4:
        raise ValueError(f"x: expected shape (N, C, H, W), got {tuple(x.shape)}")
    channels = x.shape[1]
    if w1.dim() != 4 or w1.shape[1] != channels:
        raise ValueError(f"w1: expected shape (Cm, C, k1, k1) with C = {channels}, got "
                         f"{tuple(w1.shape)}")
    hidden = w1.shape[0]
    if w2.dim() != 4 or w2.shape[0] != channels or w2.shape[1] != hidden:
        raise ValueError(f"w2: expected shape (C, Cm, k2, k2) = ({channels}, {hidden}, k2, k2), "
                         f"got {tuple(w2.shape)}")
    for name, w in (("w1", w1), ("w2", w2)):
        if w.shape[2] % 2 == 0 or w.shape[3] % 2 == 0:
            raise ValueError(f"{name}: expected odd kernel sizes ('same' padding), got "
                             f"{tuple(w.shape[2:])}")
    if b1 is not None:
        _check_shape("b1", b1, (hidden,), "(Cm,)")
    if b2 is not None:
        _check_shape("b2", b2, (channels,), "(C,)")
    return check_alpha(alpha, x)
