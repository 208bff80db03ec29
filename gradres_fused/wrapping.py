"""What `GradientResidual` needs to know about the block it wraps (docs/DESIGN.md §4, §4.1).

- `recognize(module)`: whether F is one of the fused families — `nn.Sequential(Linear, act,
  Linear)` or `nn.Sequential(Conv2d, act, Conv2d)` ('same' padding, stride 1, odd square kernels)
  with an activation module of the table — and if not, which element is not.
- `batch_stat_modules(module)`: the submodules that normalize with batch statistics in their
  current mode (g = ∇ₓΣF then mixes samples, and is ≡ 0 when F ends in a BatchNorm).
- `FrozenBatchStats`: F run twice on one input — once as it normally runs, once with those batch
  statistics held constant — for `batch_stats="frozen"`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

# Activation modules -> names of the activation table (gradres_fused/activations.py). Exact types
# only: a subclass may compute something else in its forward, which the fused op does not call.
_ACTIVATION_MODULES = {nn.ReLU: "relu", nn.SiLU: "silu", nn.Tanh: "tanh"}
_GELU_APPROXIMATIONS = {"none": "gelu", "tanh": "gelu_tanh"}
ACTIVATION_MODULE_NAMES = "nn.ReLU, nn.GELU (approximate 'none' or 'tanh'), nn.SiLU, nn.Tanh"
PATTERNS = ("nn.Sequential(nn.Linear, act, nn.Linear) or nn.Sequential(nn.Conv2d, act, nn.Conv2d), "
            f"act one of {ACTIVATION_MODULE_NAMES}")


@dataclass(frozen=True)
class Pattern:
    """A recognized block: F = second(act(first(x))), computed by the fused op of `family`."""

    family: str          # "mlp" (gradres_mlp) or "conv2d" (gradres_conv2d)
    activation: str      # a name of the activation table
    first: nn.Module     # nn.Linear or nn.Conv2d: w1, b1
    second: nn.Module    # w2, b2

    @property
    def rank(self) -> int:
        """The input rank the fused op computes GradientResidual's math for: dim 0 the sample,
        ĝ normalized over all other dims — (N, D) rows or (N, C, H, W) slabs."""
        return 2 if self.family == "mlp" else 4


def activation_name(module: nn.Module):
    """The activation table's name for an activation module, or None."""
    if type(module) is nn.GELU:
        return _GELU_APPROXIMATIONS.get(module.approximate)
    return _ACTIVATION_MODULES.get(type(module))


def _hooked(module: nn.Module) -> bool:
    return bool(module._forward_hooks or module._forward_pre_hooks)


def _conv_problem(name: str, conv: nn.Conv2d):
    k = conv.kernel_size
    if k[0] != k[1] or k[0] % 2 == 0:
        return f"{name}.kernel_size={k}: expected an odd square kernel"
    pad = conv.padding
    if pad == "same":
        pad = (k[0] // 2, k[0] // 2)
    elif pad == "valid":
        pad = (0, 0)
    if tuple(pad) != (k[0] // 2, k[0] // 2):
        return f"{name}.padding={conv.padding}: expected {k[0] // 2} or 'same' ('same' padding)"
    for attr, want in (("stride", (1, 1)), ("dilation", (1, 1)), ("groups", 1),
                       ("padding_mode", "zeros")):
        if getattr(conv, attr) != want:
            return f"{name}.{attr}={getattr(conv, attr)!r}: expected {want!r}"
    return None


def _pair_problem(first: nn.Module, second: nn.Module, inputs: str, outputs: str):
    """F must map x to x's shape: second's outputs = first's inputs, and the two must chain."""
    if getattr(second, inputs) != getattr(first, outputs):
        return (f"module[2].{inputs}={getattr(second, inputs)} != module[0].{outputs}="
                f"{getattr(first, outputs)}: the layers do not chain")
    if getattr(second, outputs) != getattr(first, inputs):
        return (f"module[2].{outputs}={getattr(second, outputs)} != module[0].{inputs}="
                f"{getattr(first, inputs)}: F(x) must be shaped like x")
    return None


def structure_key(module: nn.Module) -> tuple:
    """What recognition depends on that a model plausibly changes after construction, cheap to
    compare at every forward: the block's and its layers' identity and type, and whether any of
    them has forward hooks (a parametrization changes a layer's type). A layer's attributes
    (padding, stride, approximate, …) are not in it: changing them in place is not re-checked."""
    if type(module) is not nn.Sequential:
        return (module, type(module))
    layers = tuple(module._modules.values())
    return (module, layers, tuple(map(type, layers)),
            _hooked(module) or any(map(_hooked, layers)))


def recognize(module: nn.Module) -> Union[Pattern, str]:
    """The fused Pattern that computes `module`, or a sentence saying which element is not one.

    Exact types only (a subclass, a parametrization or a forward hook changes what the module
    computes, and the fused op never calls its forward); ReLU's `inplace` does not matter."""
    if type(module) is not nn.Sequential:
        return f"module ({type(module).__name__}) is not an nn.Sequential"
    if len(module) != 3:
        return f"module is an nn.Sequential of {len(module)} modules, not 3 (layer, act, layer)"
    first, act, second = module
    activation = activation_name(act)
    if activation is None:
        return f"module[1] is {act!r}, not one of {ACTIVATION_MODULE_NAMES}"
    kinds = (type(first), type(second))
    if kinds not in ((nn.Linear, nn.Linear), (nn.Conv2d, nn.Conv2d)):
        return (f"module[0] and module[2] are {kinds[0].__name__} and {kinds[1].__name__}, not "
                f"two nn.Linear or two nn.Conv2d")  # a lazy layer: until its first forward
    for name, m in (("module", module), ("module[0]", first), ("module[1]", act),
                    ("module[2]", second)):
        if _hooked(m):
            return f"{name} has forward hooks, which the fused op would skip"
    if kinds[0] is nn.Linear:
        family = "mlp"
        problem = _pair_problem(first, second, "in_features", "out_features")
    else:
        family = "conv2d"
        problem = (_conv_problem("module[0]", first) or _conv_problem("module[2]", second)
                   or _pair_problem(first, second, "in_channels", "out_channels"))
    return problem or Pattern(family, activation, first, second)


# --- batch statistics -----------------------------------------------------------------------------
def uses_batch_stats(bn: _BatchNorm) -> bool:
    """Whether a BatchNorm normalizes with the batch's statistics in its current mode (training,
    or no running statistics to use) — exactly the condition in _BatchNorm.forward."""
    return bn.training or (bn.running_mean is None and bn.running_var is None)


def batch_stat_modules(module: nn.Module, prefix: str = "module") -> List[Tuple[str, _BatchNorm]]:
    """(qualified name, module) of every submodule normalizing with batch statistics now
    (BatchNorm1d/2d/3d, SyncBatchNorm, the lazy ones: every _BatchNorm)."""
    return [(f"{prefix}.{name}" if name else prefix, m) for name, m in module.named_modules()
            if isinstance(m, _BatchNorm) and uses_batch_stats(m)]


def _rng_state(device: torch.device):
    cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    return torch.get_rng_state(), cuda


def _set_rng_state(device: torch.device, state) -> None:
    cpu, cuda = state
    torch.set_rng_state(cpu)
    if cuda is not None:
        torch.cuda.set_rng_state(cuda, device)


class FrozenBatchStats:
    """F on one input, twice: `live(x)` runs it as it normally runs (each BatchNorm with the batch's
    statistics, updating its running statistics once) and records the batch mean and (biased)
    variance each BatchNorm normalized with; `frozen(x)`, called next on the same x, runs it with
    those statistics as constants (the BatchNorms in eval mode for the call, their outputs replaced
    by F.batch_norm at the recorded, detached statistics) and with the random number generator
    replayed from where `live` started, so a dropout draws the same mask. Afterwards the generator
    is where one forward leaves it.

    Under SyncBatchNorm across processes `live` normalizes with the global statistics but the
    recorded ones are this process's (documented in docs/DESIGN.md §4.1)."""

    def __init__(self, module: nn.Module, bns: List[Tuple[str, _BatchNorm]]):
        self.module, self.bns = module, [bn for _, bn in bns]
        self._stats: Dict[int, List[Tuple[Tensor, Tensor]]] = {}
        self._rng = None

    def _record(self, bn, args):
        h = args[0].detach()
        var, mean = torch.var_mean(h, dim=[0] + list(range(2, h.dim())), correction=0)
        self._stats.setdefault(id(bn), []).append((mean, var))

    def _replace(self, bn, args, _output):
        mean, var = self._stats[id(bn)].pop(0)  # calls in the order `live` made them
        return F.batch_norm(args[0], mean, var, bn.weight, bn.bias, False, 0.0, bn.eps)

    def live(self, x: Tensor) -> Tensor:
        self._stats = {}
        self._rng = (x.device, _rng_state(x.device))
        handles = [bn.register_forward_pre_hook(self._record) for bn in self.bns]
        try:
            return self.module(x)
        finally:
            for h in handles:
                h.remove()

    def frozen(self, x: Tensor) -> Tensor:
        device, before = self._rng
        after = _rng_state(device)
        modes = [bn.training for bn in self.bns]
        handles = [bn.register_forward_hook(self._replace) for bn in self.bns]
        _set_rng_state(device, before)
        try:
            for bn in self.bns:
                bn.training = False  # no second update of the running statistics
            return self.module(x)
        finally:
            for bn, mode in zip(self.bns, modes):
                bn.training = mode
            for h in handles:
                h.remove()
            _set_rng_state(device, after)
            self._stats = {}
