"""nn.Module front ends (docs/DESIGN.md §4).

State-dict keys do not depend on the backend: `fc1.*`, `fc2.*` (MLP), `conv1.*`, `conv2.*` (conv),
`module.*` (GradientResidual, fused or not) and `alpha` — a Parameter when learnable, a buffer when frozen, of shape (1,): FSDP2's
`fully_shard` refuses 0-d parameters. A state_dict saved with the earlier 0-d alpha still loads.

Arguments are checked at construction; a forward whose input does not match the module's dtype or
device says which module attribute differs and how to convert (`.to(...)` or autocast).
"""
from __future__ import annotations

import itertools
from typing import Callable, List, Optional, Tuple, Union

import torch
from torch import Tensor, nn

from . import reference
from .activations import get_activation
from .backends import check_exportable
from .ops import gradres_conv2d, gradres_mlp
from .validation import (check_backend_name, check_bool, check_flags, check_module_input,
                         check_number, check_size)
from .wrapping import (PATTERNS, FrozenBatchStats, Pattern, batch_stat_modules, recognize,
                       structure_key)

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


def _floating_place(module) -> Tuple[Optional[torch.device], Optional[torch.dtype]]:
    """(device, dtype) of a module's first floating parameter or buffer; (None, None) if none."""
    if isinstance(module, nn.Module):
        for t in itertools.chain(module.parameters(), module.buffers()):
            if t.dtype.is_floating_point:
                return t.device, t.dtype
    return None, None


BATCH_STATS = ("error", "frozen", "allow")
_FUSED_ONLY = ("composite", "cpp", "triton")  # backends that exist only as fused ops


class GradientResidual(_AlphaMixin):
    """Wraps a block F (input and output of the same shape) as y = F(x) + (1−m)·x + m·ĝ, F scaled
    by the constant `scale` (EDSR's res_scale). The sample is dim 0; ĝ is normalized over all
    other dims.

    A block it recognizes — `nn.Sequential(Linear, act, Linear)` on (N, D) inputs or
    `nn.Sequential(Conv2d, act, Conv2d)` ('same' padding, stride 1, odd square kernels) on
    (N, C, H, W), act one of nn.ReLU, nn.GELU, nn.SiLU, nn.Tanh — runs as the fused op
    (`gradres_mlp`/`gradres_conv2d` with `backend`) on the block's own parameters; `.fused` says
    whether it does, `.fused_reason` why not. Every forward checks that the block's layers are
    the same objects of the same types without forward hooks (re-recognizing it when not), so a
    layer replaced or hooked after construction runs the math it now computes; a layer's
    attributes changed in place (padding, stride, approximate, …) are not re-read. Any other
    block runs the reference math (autograd for g); naming a fused backend ('composite', 'cpp',
    'triton') for one raises, saying which element is not recognized.

    Batch statistics (docs/DESIGN.md §4.1): a BatchNorm that normalizes with the batch's statistics
    makes ΣF mix the samples (g ≡ 0 when F ends in one). `batch_stats="error"` (default) raises
    at such a forward, naming the submodule; "frozen" takes g with the batch mean and variance
    held constant (the per-sample Jacobian at the current statistics; F runs a second time for
    it); "allow" keeps g as autograd gives it.

    alpha takes the dtype and device of the block's parameters.
    """

    def __init__(self, module: nn.Module, *, alpha_init: float = 0.0, learn_alpha: bool = True,
                 normalize: bool = True, eps: float = 1e-6, detach: bool = True,
                 backend: str = "auto", scale: float = 1.0, batch_stats: str = "error"):
        super().__init__()
        if not callable(module):
            raise TypeError(f"module: expected a callable nn.Module, got {type(module).__name__}")
        check_backend_name(backend)
        check_number("scale", scale)
        if batch_stats not in BATCH_STATS:
            raise ValueError(f"batch_stats: expected one of {list(BATCH_STATS)}, got "
                             f"{batch_stats!r}")
        self.module = module
        self.backend, self.scale, self.batch_stats = backend, float(scale), batch_stats
        self._recognized()  # a named fused backend for a block it does not recognize: raise now
        device, dtype = _floating_place(module)
        self._init_gradres(None, alpha_init, learn_alpha, normalize, eps, detach, device, dtype)

    def _recognized(self, refuse: bool = True) -> Union[Pattern, str]:
        """recognize(self.module), cached on its structure_key; `refuse`: raise when a fused
        backend is named for a block it does not recognize."""
        module = self._modules["module"]  # not self.module: nn.Module.__getattr__ costs ~1 µs
        key = structure_key(module)
        cached = self.__dict__.get("_recognition")
        if cached is not None and cached[0] == key:
            found = cached[1]
        else:
            found = recognize(module)
            self.__dict__["_recognition"] = (key, found)
        if refuse and isinstance(found, str) and self.backend in _FUSED_ONLY:
            raise ValueError(f"backend={self.backend!r}: GradientResidual runs a fused backend "
                             f"only on a block it recognizes ({PATTERNS}); this one is not: "
                             f"{found}. backend='auto' runs it with the reference math")
        return found

    @property
    def fused_reason(self) -> Optional[str]:
        """Why forward runs the reference math rather than a fused op; None when it runs fused
        (the MLP pattern: on 2-D inputs)."""
        if self.backend == "reference":
            return "backend='reference'"
        found = self._recognized(refuse=False)
        return found if isinstance(found, str) else None

    @property
    def fused(self) -> bool:
        return self.fused_reason is None

    def _plan(self, x) -> Optional[Pattern]:
        """The Pattern to run fused on x, or None for the reference math."""
        if self.backend == "reference":
            return None
        found = self._recognized()
        if isinstance(found, str):
            return None
        if isinstance(x, Tensor) and x.dim() != found.rank:
            if self.backend == "auto":
                return None  # the fused op would compute another normalization of ĝ
            raise ValueError(f"x: GradientResidual's sample is dim 0 with ĝ normalized over the "
                             f"other dims; the fused {found.family} op (backend="
                             f"{self.backend!r}) computes that for {found.rank}-D inputs, got "
                             f"shape {tuple(x.shape)}; backend='auto' runs it with the reference "
                             f"math" + ("; GradResMLP takes every row as a sample"
                                        if found.family == "mlp" else ""))
        return found

    def forward(self, x: Tensor) -> Tensor:
        pattern = self._plan(x)
        if pattern is not None:
            return self._fused(pattern, x)
        return self._reference(x)

    def _fused(self, p: Pattern, x: Tensor) -> Tensor:
        check_module_input(self, x, "module.0.weight", p.first.weight)
        w2, b2 = p.second.weight, p.second.bias
        if self.scale != 1.0:
            w2 = w2 * self.scale
            b2 = None if b2 is None else b2 * self.scale
        op = gradres_mlp if p.family == "mlp" else gradres_conv2d
        return op(x, p.first.weight, p.first.bias, w2, b2, self.alpha, activation=p.activation,
                  normalize=self.normalize, eps=self.eps, detach=self.detach,
                  backend=self.backend)

    def _reference(self, x: Tensor) -> Tensor:
        if not isinstance(x, Tensor) or not x.is_floating_point():
            raise TypeError("x: expected a floating torch.Tensor")
        if x.dim() < 1:
            raise ValueError("x: expected a batched tensor with the sample on dim 0, got a scalar")
        check_exportable("GradientResidual")
        fn, grad_fn = self.module, None
        bns = batch_stat_modules(self.module) if isinstance(self.module, nn.Module) else []
        if bns and self.batch_stats == "error":
            name, bn = bns[0]
            why = "training mode" if bn.training else "no running statistics"
            raise ValueError(
                f"module: {name} ({type(bn).__name__}) normalizes with batch statistics ({why}): "
                f"ΣF(x) then mixes the samples of the batch, so g = ∇ₓΣF(x) is no per-sample "
                f"gradient — and g ≡ 0 when F ends in a BatchNorm: the block would train as "
                f"F(x) + (1−m)·x and be evaluated with a unit-norm ĝ. Pass batch_stats='frozen' "
                f"(g with the batch mean and variance held constant: the per-sample Jacobian, "
                f"as in evaluation) or batch_stats='allow' (g as autograd gives it), or use a "
                f"per-sample normalization (GroupNorm, LayerNorm)")
        if bns and self.batch_stats == "frozen":
            frozen = FrozenBatchStats(self.module, bns)
            fn, grad_fn = frozen.live, frozen.frozen
        if self.scale != 1.0:
            fn, grad_fn = _scaled(fn, self.scale), grad_fn and _scaled(grad_fn, self.scale)
        return reference.gradient_residual(fn, x, self.alpha.to(x.dtype),
                                           normalize=self.normalize, eps=self.eps,
                                           detach=self.detach, grad_fn=grad_fn)

    def extra_repr(self) -> str:
        reason = self.fused_reason
        path = "fused" if reason is None else f"reference math: {reason}"
        return (f"{self._gradres_repr()}, backend={self.backend!r}, scale={self.scale:g}, "
                f"batch_stats={self.batch_stats!r}, path={path!r}")


def _scaled(fn: Callable[[Tensor], Tensor], scale: float) -> Callable[[Tensor], Tensor]:
    return lambda t: fn(t) * scale


def convert(model: nn.Module, match: Callable[[nn.Module], bool],
            body: Callable[[nn.Module], nn.Module], **options) -> nn.Module:
    """Replace, in place, every submodule m of `model` for which match(m) holds (the outermost
    ones) by GradientResidual(body(m), **options); returns `model` — or the wrapper, when `model`
    itself matches.

    body(m) is F, the block without its identity path, built from m's own submodules (e.g.
    `nn.Sequential(m.conv1, m.relu, m.conv2)`): the parameters are the same objects, so weights,
    device and dtype stay (load a checkpoint before converting: the keys become
    `<m's name>.module.*` plus `<m's name>.alpha`). An option may be a function of m, e.g.
    `scale=lambda m: m.res_scale`. Raises ValueError when nothing matches.
    """
    def wrap(m: nn.Module) -> GradientResidual:
        kwargs = {k: (v(m) if callable(v) else v) for k, v in options.items()}
        return GradientResidual(body(m), **kwargs)

    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected an nn.Module, got {type(model).__name__}")
    if match(model):
        return wrap(model)
    matched: List[str] = []
    for name, m in model.named_modules():
        if name and not any(name.startswith(p + ".") for p in matched) and match(m):
            matched.append(name)
    if not matched:
        raise ValueError(f"match: no submodule of the {type(model).__name__} matched; nothing "
                         f"to convert")
    for name in matched:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        setattr(parent, child, wrap(getattr(parent, child)))
    return model
