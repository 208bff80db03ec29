"""Backend registry and selection (docs/DESIGN.md §3).

A backend is a thin implementation of one contract: `mlp(x2d, w1, b1, w2, b2, alpha, **options)`
and `conv2d(x, ...)` on already validated arguments, plus `unavailable(device, dtype)` returning the
reason it cannot run there (None when it can). Selection happens before autograd records anything.

`backend="auto"` takes the first available entry of AUTO_ORDER (fastest first) unless the
environment variable GRADRES_BACKEND names one, which then must be available. A backend named
explicitly (argument or variable) that cannot run raises with the reason; auto only ever picks
backends that satisfy the same parity contract, so it never changes results beyond tolerance.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Union

import torch

from . import composite, cpp, reference, triton_backend

ENV_VAR = "GRADRES_BACKEND"


def _always(device: torch.device, dtype: torch.dtype) -> Optional[str]:
    return None


@dataclass(frozen=True)
class Backend:
    name: str
    mlp: Callable
    conv2d: Callable
    unavailable: Callable[[torch.device, torch.dtype], Optional[str]] = _always
    # False on a device: the dispatcher runs float16/bfloat16 inputs there on float32 copies
    # (float32 accumulation); True: the backend takes them as they are.
    native_low_precision: Callable[[torch.device], bool] = lambda device: False
    # False on a device: `auto` passes this backend over there (it may still be named).
    auto_ok: Callable[[torch.device], bool] = lambda device: True
    # False: torch.export cannot trace it (torch.autograd.grad inside the forward).
    exportable: bool = True


_REGISTRY: Dict[str, Backend] = {}
# Every backend of docs/DESIGN.md §3; the compiled ones register themselves when their build is present.
KNOWN = ("reference", "composite", "cpp", "triton")
# Fastest first; `reference` is never picked by auto (it is the slow ground truth).
AUTO_ORDER = ("triton", "cpp", "composite")
_REASONS = {"cpp": cpp.IMPORT_ERROR, "triton": triton_backend.IMPORT_ERROR}  # why a known backend did not register


def register(backend: Backend) -> None:
    _REGISTRY[backend.name] = backend


register(Backend("reference", reference.gradres_mlp, reference.gradres_conv2d, exportable=False))
register(Backend("composite", composite.gradres_mlp, composite.gradres_conv2d))
if cpp.IMPORT_ERROR is None:
    register(Backend("cpp", cpp.gradres_mlp, cpp.gradres_conv2d, cpp.unavailable,
                     cpp.native_low_precision))
if triton_backend.IMPORT_ERROR is None:
    register(Backend("triton", triton_backend.gradres_mlp, triton_backend.gradres_conv2d,
                     triton_backend.unavailable, triton_backend.native_low_precision,
                     triton_backend.auto_ok))


def _devices(device) -> List[torch.device]:
    if device is not None:
        return [torch.device(device)]
    devices = [torch.device("cpu")]
    if torch.cuda.is_available():
        devices.append(torch.device("cuda"))
    return devices


def available_backends(device: Union[str, torch.device, None] = None) -> List[str]:
    """Names of the backends that can run on `device` (default: on any device present)."""
    devices = _devices(device)
    return [name for name, b in _REGISTRY.items()
            if any(b.unavailable(dev, torch.float32) is None for dev in devices)]


def unavailable_reason(name: str, device, dtype: torch.dtype = torch.float32) -> Optional[str]:
    """Why backend `name` cannot run on `device` with `dtype`, or None when it can."""
    b = _REGISTRY.get(name)
    if b is None:
        if name not in KNOWN:
            return f"unknown backend; known: {list(KNOWN)}"
        return _REASONS.get(name) or "not part of this build (registers itself once importable)"
    return b.unavailable(torch.device(device), dtype)


def exportable_backends() -> List[str]:
    """Registered backends that torch.export.export can trace."""
    return [name for name, b in _REGISTRY.items() if b.exportable]


def check_exportable(what: str) -> None:
    """Under torch.export, refuse `what` (a non-exportable backend or GradientResidual) with the
    alternatives, instead of PyTorch's internal "fake tensor in the constant's list" error that
    torch.autograd.grad inside an exported forward produces."""
    if torch.compiler.is_exporting():
        raise RuntimeError(f"{what} cannot be exported: it takes g from torch.autograd.grad, which "
                           f"torch.export does not trace; use GradResMLP/GradResConv2d or the "
                           f"functional API with a backend that exports: {exportable_backends()}")


def get_backend(name: str, device: torch.device, dtype: torch.dtype) -> Backend:
    """The backend to run for tensors on `device` with `dtype`; raises naming the alternatives."""
    if not isinstance(name, str):
        raise TypeError(f"backend: expected a str, got {type(name).__name__}")
    source = "backend"
    if name == "auto":
        env = os.environ.get(ENV_VAR, "").strip()
        if env and env != "auto":
            name, source = env, f"{ENV_VAR} environment variable"
        else:
            for candidate in AUTO_ORDER:
                b = _REGISTRY.get(candidate)
                if b is not None and b.auto_ok(device) and b.unavailable(device, dtype) is None:
                    return b
            raise RuntimeError(f"backend: no backend can run on {device} with {dtype}")
    b = _REGISTRY.get(name)
    if b is None:
        raise ValueError(f"{source}: unknown backend {name!r}; expected 'auto' or one of "
                         f"{available_backends(device)} (available on {device})")
    reason = b.unavailable(device, dtype)
    if reason is not None:
        raise RuntimeError(f"{source}: backend {name!r} cannot run on {device} with {dtype}: "
                           f"{reason}; available there: {available_backends(device)}")
    if not b.exportable:
        check_exportable(f"{source}: backend {name!r}")
    return b
