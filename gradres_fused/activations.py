"""The activation table: φ and its first three derivatives, the only place that knows them.

Every backend takes φ, φ', φ'', φ''' from here (the Python backends call these functions; the C++ and
Triton kernels implement the same closed forms and are tested against this table). Each entry is
plain differentiable torch code, so autograd can differentiate any entry once more: the composite
backward uses φ'' and its own backward gets φ''' from autograd, which the tests check against the
table's φ'''.

`d2_is_zero` marks activations whose φ'' vanishes (relu): backends skip the second-order terms it
kills instead of multiplying by zero.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Dict, Tuple

import torch
from torch import Tensor

_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
_INV_SQRT_2 = 1.0 / math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
_GELU_TANH_K = 0.044715

Fn = Callable[[Tensor], Tensor]


@dataclass(frozen=True)
class Activation:
    """φ and φ', φ'', φ''' as elementwise torch functions."""

    name: str
    fn: Fn
    d1: Fn
    d2: Fn
    d3: Fn
    d2_is_zero: bool = False

    def derivative(self, z: Tensor, order: int) -> Tensor:
        """φ^(order)(z) for order 0..3."""
        return (self.fn, self.d1, self.d2, self.d3)[order](z)


# --- relu -----------------------------------------------------------------------------------------
# φ' is the step: 0 where z ≤ 0, else 1 — so φ'(NaN) = 1, torch's relu-backward convention (the
# reference differentiates torch.relu); φ'' and φ''' are zero almost everywhere.
def _relu_d1(z: Tensor) -> Tensor:
    return (~(z <= 0)).to(z.dtype)


def _zeros(z: Tensor) -> Tensor:
    return torch.zeros_like(z)


# --- gelu (erf) -----------------------------------------------------------------------------------
# φ = z Φ(z), Φ the normal CDF, ϕ its density:  φ' = Φ + zϕ,  φ'' = ϕ(2 − z²),  φ''' = ϕ(z³ − 4z).
def _normal_pdf(z: Tensor) -> Tensor:
    return torch.exp(-0.5 * z * z) * _INV_SQRT_2PI


def _normal_cdf(z: Tensor) -> Tensor:
    return 0.5 * (1.0 + torch.erf(z * _INV_SQRT_2))


def _gelu(z: Tensor) -> Tensor:
    return z * _normal_cdf(z)


def _gelu_d1(z: Tensor) -> Tensor:
    return _normal_cdf(z) + z * _normal_pdf(z)


def _gelu_d2(z: Tensor) -> Tensor:
    return _normal_pdf(z) * (2.0 - z * z)


def _gelu_d3(z: Tensor) -> Tensor:
    return _normal_pdf(z) * z * (z * z - 4.0)


# --- gelu (tanh approximation) --------------------------------------------------------------------
# φ = ½ z (1 + T), T = tanh(u), u = c(z + k z³); with S = 1 − T² and u', u'', u''' the z-derivatives:
#   φ'   = ½(1 + T) + ½ z S u'
#   φ''  = S u' − z T S u'² + ½ z S u''
#   φ''' = −3 T S u'² + 3/2 S u'' − z S u'³ (S − 2T²) − 3 z T S u' u'' + ½ z S u'''
def _gelu_tanh_parts(z: Tensor) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    c, k = _SQRT_2_OVER_PI, _GELU_TANH_K
    t = torch.tanh(c * (z + k * z * z * z))
    s = 1.0 - t * t
    u1 = c * (1.0 + 3.0 * k * z * z)
    u2 = (6.0 * c * k) * z
    return t, s, u1, u2, torch.full_like(z, 6.0 * c * k)


def _gelu_tanh(z: Tensor) -> Tensor:
    t = torch.tanh(_SQRT_2_OVER_PI * (z + _GELU_TANH_K * z * z * z))
    return 0.5 * z * (1.0 + t)


def _gelu_tanh_d1(z: Tensor) -> Tensor:
    t, s, u1, _, _ = _gelu_tanh_parts(z)
    return 0.5 * (1.0 + t) + 0.5 * z * s * u1


def _gelu_tanh_d2(z: Tensor) -> Tensor:
    t, s, u1, u2, _ = _gelu_tanh_parts(z)
    return s * u1 - z * t * s * u1 * u1 + 0.5 * z * s * u2


def _gelu_tanh_d3(z: Tensor) -> Tensor:
    t, s, u1, u2, u3 = _gelu_tanh_parts(z)
    return (-3.0 * t * s * u1 * u1 + 1.5 * s * u2 - z * s * u1 * u1 * u1 * (s - 2.0 * t * t)
            - 3.0 * z * t * s * u1 * u2 + 0.5 * z * s * u3)


# --- silu -----------------------------------------------------------------------------------------
# φ = zσ:  φ' = σ(1 + z(1 − σ)),  φ'' = σ(1 − σ)(2 + z(1 − 2σ)),
#          φ''' = σ(1 − σ)(3(1 − 2σ) + z(1 − 6σ + 6σ²)).
def _silu(z: Tensor) -> Tensor:
    return z * torch.sigmoid(z)


def _silu_d1(z: Tensor) -> Tensor:
    sg = torch.sigmoid(z)
    return sg * (1.0 + z * (1.0 - sg))


def _silu_d2(z: Tensor) -> Tensor:
    sg = torch.sigmoid(z)
    return sg * (1.0 - sg) * (2.0 + z * (1.0 - 2.0 * sg))


def _silu_d3(z: Tensor) -> Tensor:
    sg = torch.sigmoid(z)
    return sg * (1.0 - sg) * (3.0 * (1.0 - 2.0 * sg) + z * (1.0 - 6.0 * sg + 6.0 * sg * sg))


# --- tanh -----------------------------------------------------------------------------------------
# φ' = 1 − t²,  φ'' = −2t(1 − t²),  φ''' = (1 − t²)(6t² − 2).
def _tanh_d1(z: Tensor) -> Tensor:
    t = torch.tanh(z)
    return 1.0 - t * t


def _tanh_d2(z: Tensor) -> Tensor:
    t = torch.tanh(z)
    return -2.0 * t * (1.0 - t * t)


def _tanh_d3(z: Tensor) -> Tensor:
    t = torch.tanh(z)
    return (1.0 - t * t) * (6.0 * t * t - 2.0)


# --- sin ------------------------------------------------------------------------------------------
def _neg_sin(z: Tensor) -> Tensor:
    return -torch.sin(z)


def _neg_cos(z: Tensor) -> Tensor:
    return -torch.cos(z)


ACTIVATIONS: Dict[str, Activation] = {
    a.name: a
    for a in (
        Activation("relu", torch.relu, _relu_d1, _zeros, _zeros, d2_is_zero=True),
        Activation("gelu", _gelu, _gelu_d1, _gelu_d2, _gelu_d3),
        Activation("gelu_tanh", _gelu_tanh, _gelu_tanh_d1, _gelu_tanh_d2, _gelu_tanh_d3),
        Activation("silu", _silu, _silu_d1, _silu_d2, _silu_d3),
        Activation("tanh", torch.tanh, _tanh_d1, _tanh_d2, _tanh_d3),
        Activation("sin", torch.sin, torch.cos, _neg_sin, _neg_cos),
    )
}


def get_activation(name: str) -> Activation:
    """The table entry for `name`; ValueError naming the known activations otherwise."""
    if not isinstance(name, str) or name not in ACTIVATIONS:
        raise ValueError(
            f"activation: expected one of {sorted(ACTIVATIONS)}, got {name!r}")
    return ACTIVATIONS[name]
