"""φ, φ', φ'' for the Triton kernels: the closed forms of `gradres_fused.activations`, selected by
a compile-time code, so every kernel is specialised to one activation; the kernels' `D2_ZERO`
constexpr comes from the table's `d2_is_zero` and removes the φ'' terms at compile time.

The table in gradres_fused/activations.py is the source of truth; these functions implement the
same formulas and the tests compare every kernel against the reference built on that table.

Constants: Triton turns a Python float literal into a float32 constant, which would cap float64
kernels (interpreter only, for gradcheck) at ~1e-8 relative error. Each irrational constant is
therefore split into an exact float32 head and a float32 tail and applied as `z*HI + z*LO`: in
float32 the tail vanishes below rounding, in float64 the pair carries ~1e-16.
"""
from __future__ import annotations

import math

import numpy as np
import triton
import triton.language as tl

from ..activations import get_activation

# Compile-time activation codes: which closed form below implements each table entry (the keys
# are exactly the names of gradres_fused.activations.ACTIVATIONS; a test checks it).
CODES = {"relu": 0, "gelu": 1, "gelu_tanh": 2, "silu": 3, "tanh": 4, "sin": 5}


def activation_constexprs(name: str) -> dict:
    """The kernels' activation constexprs from the table entry: ACT (the closed form) and
    D2_ZERO (φ'' ≡ 0: the table's d2_is_zero)."""
    return {"ACT": CODES[get_activation(name).name], "D2_ZERO": get_activation(name).d2_is_zero}


def _split(c: float):
    hi = float(np.float32(c))
    return tl.constexpr(hi), tl.constexpr(float(np.float32(c - hi)))


_INV_SQRT2_HI, _INV_SQRT2_LO = _split(1.0 / math.sqrt(2.0))
_INV_SQRT_2PI_HI, _INV_SQRT_2PI_LO = _split(1.0 / math.sqrt(2.0 * math.pi))
_SQRT_2_OVER_PI_HI, _SQRT_2_OVER_PI_LO = _split(math.sqrt(2.0 / math.pi))
_GELU_K_HI, _GELU_K_LO = _split(0.044715)
_THIRD_HI, _THIRD_LO = _split(1.0 / 3.0)


@triton.jit
def _mul_const(z, hi: tl.constexpr, lo: tl.constexpr):
    return z * hi + z * lo


@triton.jit
def tanh(x):
    """tanh from exp (libdevice's is not available to the interpreter). For |x| < 0.1 a Taylor
    polynomial avoids the cancellation of 1 − e^{−2|x|}; elsewhere the error is ~1 ulp."""
    ax = tl.abs(x)
    e = tl.exp(-2.0 * ax)
    big = (1.0 - e) / (1.0 + e)
    x2 = ax * ax
    # x − x³/3 + 2x⁵/15 − 17x⁷/315 + 62x⁹/2835 − 1382x¹¹/155925 (next term < 1e-12 relative at
    # 0.1; float32 coefficients are exact enough for every term but x³/3, which is split)
    poly = x2 * (2.0 / 15.0 + x2 * (-17.0 / 315.0 + x2 * (62.0 / 2835.0
                                                         + x2 * (-1382.0 / 155925.0))))
    small = ax - _mul_const(ax * x2, _THIRD_HI, _THIRD_LO) + ax * x2 * poly
    t = tl.where(ax < 0.1, small, big)
    return tl.where(x < 0, -t, t)


@triton.jit
def _normal_pdf(z):
    return _mul_const(tl.exp(-0.5 * z * z), _INV_SQRT_2PI_HI, _INV_SQRT_2PI_LO)


@triton.jit
def _normal_cdf(z):
    return 0.5 * (1.0 + tl.erf(_mul_const(z, _INV_SQRT2_HI, _INV_SQRT2_LO)))


@triton.jit
def _gelu_tanh_t(z):
    u = z + _mul_const(z * z * z, _GELU_K_HI, _GELU_K_LO)
    return tanh(_mul_const(u, _SQRT_2_OVER_PI_HI, _SQRT_2_OVER_PI_LO))


@triton.jit
def _gelu_tanh_u1(z):  # u' = c(1 + 3k z²)
    return _mul_const(1.0 + 3.0 * _mul_const(z * z, _GELU_K_HI, _GELU_K_LO),
                      _SQRT_2_OVER_PI_HI, _SQRT_2_OVER_PI_LO)


@triton.jit
def act_fn(z, ACT: tl.constexpr):
    """φ(z)."""
    if ACT == 0:
        out = tl.where(z < 0, 0.0, z)  # keeps NaN, like torch.relu (tl.maximum may drop it)
    elif ACT == 1:
        out = z * _normal_cdf(z)
    elif ACT == 2:
        out = 0.5 * z * (1.0 + _gelu_tanh_t(z))
    elif ACT == 3:
        out = z * tl.sigmoid(z)
    elif ACT == 4:
        out = tanh(z)
    else:
        out = tl.sin(z)
    return out


@triton.jit
def act_d1(z, ACT: tl.constexpr):
    """φ'(z)."""
    if ACT == 0:
        out = tl.where(z <= 0, 0.0, 1.0).to(z.dtype)  # φ'(NaN) = 1, as torch's relu backward
    elif ACT == 1:
        out = _normal_cdf(z) + z * _normal_pdf(z)
    elif ACT == 2:
        t = _gelu_tanh_t(z)
        out = 0.5 * (1.0 + t) + 0.5 * z * (1.0 - t * t) * _gelu_tanh_u1(z)
    elif ACT == 3:
        sg = tl.sigmoid(z)
        out = sg * (1.0 + z * (1.0 - sg))
    elif ACT == 4:
        t = tanh(z)
        out = 1.0 - t * t
    else:
        out = tl.cos(z)
    return out


@triton.jit
def act_d2(z, ACT: tl.constexpr):
    """φ''(z) of the activations whose φ'' is not identically zero; callers skip the φ'' terms
    at compile time when D2_ZERO (table: d2_is_zero), so relu has no branch here."""
    tl.static_assert(ACT != 0, "relu: φ'' ≡ 0, callers must skip it (D2_ZERO)")
    if ACT == 1:
        out = _normal_pdf(z) * (2.0 - z * z)
    elif ACT == 2:
        t = _gelu_tanh_t(z)
        s = 1.0 - t * t
        u1 = _gelu_tanh_u1(z)
        u2 = 6.0 * _mul_const(_mul_const(z, _GELU_K_HI, _GELU_K_LO),
                              _SQRT_2_OVER_PI_HI, _SQRT_2_OVER_PI_LO)
        out = s * u1 - z * t * s * u1 * u1 + 0.5 * z * s * u2
    elif ACT == 3:
        sg = tl.sigmoid(z)
        out = sg * (1.0 - sg) * (2.0 + z * (1.0 - 2.0 * sg))
    elif ACT == 4:
        t = tanh(z)
        out = -2.0 * t * (1.0 - t * t)
    else:
        out = -tl.sin(z)
    return out
