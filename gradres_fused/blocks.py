"""The two fused block families as sets of linear maps (docs/DESIGN.md §1).

A block is z = L1(x) + b1, a = φ(z), F = L2(a) + b2. The formulas of docs/DESIGN.md §1–§2 need only these
maps, their adjoints, their weight gradients and the s-map S = ∂ΣF/∂a, so `composite` writes the
formulas once over a family and every backend takes S from here. Everything is differentiable
torch code.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn.grad import conv2d_weight


def _linear_adjoint(t: Tensor, w: Tensor) -> Tensor:  # t W: the input-gradient map of F.linear
    return t @ w


def _linear_weight_grad(inp: Tensor, grad_out: Tensor, w: Tensor) -> Tensor:  # grad_outᵀ inp
    return grad_out.t() @ inp


class MLPFamily:
    """Rows are samples: x (N, D), W1 (H, D), W2 (D, H) in the nn.Linear convention.

    lin1/lin2 are the layers (with bias), *_adjoint their input-gradient maps (g = d W1,
    x̄ = z̄ W1, ā = ȳ W2), *_weight_grad their weight gradients, lin1_no_bias gives d̄ = ḡ W1ᵀ.
    """

    name = "mlp"
    lin1 = lin2 = staticmethod(F.linear)
    lin1_adjoint = lin2_adjoint = staticmethod(_linear_adjoint)
    lin1_weight_grad = lin2_weight_grad = staticmethod(_linear_weight_grad)
    lin1_no_bias = staticmethod(F.linear)

    @staticmethod
    def smap(w2: Tensor, x: Tensor) -> Tensor:
        """s = W2ᵀ1, shape (H,): ∂ΣF/∂a is the same for every row."""
        return w2.sum(0)

    @staticmethod
    def smap_adjoint(s_bar: Tensor, w2: Tensor) -> Tensor:
        """W̄2 contribution of s̄: every row of W2 gets s̄."""
        return s_bar.expand_as(w2)

    @staticmethod
    def channel_sum(t: Tensor) -> Tensor:  # bias gradients: sum over all but the feature dim
        return t.sum(0)

    @staticmethod
    def sample_dot(u: Tensor, v: Tensor) -> Tensor:  # per-row ⟨u, v⟩, keepdim
        return (u * v).sum(-1, keepdim=True)


def _pad(w: Tensor) -> Tuple[int, int]:
    return (w.shape[2] // 2, w.shape[3] // 2)


def _same_conv(t: Tensor, w: Tensor, b: Optional[Tensor] = None) -> Tensor:
    return F.conv2d(t, w, b, padding=_pad(w))


def _same_conv_adjoint(t: Tensor, w: Tensor) -> Tensor:
    return F.conv_transpose2d(t, w, padding=_pad(w))


def _same_conv_weight_grad(inp: Tensor, grad_out: Tensor, w: Tensor) -> Tensor:
    return conv2d_weight(inp, w.shape, grad_out, padding=_pad(w))


def border_matrix(k: int, n: int, like: Tensor) -> Tensor:
    """R[u, i] = 1 where kernel tap u reaches output row i under 'same' padding: 0 ≤ i − u + k//2 < n."""
    u = torch.arange(k, device=like.device).unsqueeze(1)
    i = torch.arange(n, device=like.device).unsqueeze(0)
    o = i - u + k // 2
    return ((o >= 0) & (o < n)).to(like.dtype)


class Conv2dFamily:
    """x (N, C, H, W), W1 (Cm, C, k1h, k1w), W2 (C, Cm, k2h, k2w); odd kernels, 'same' padding."""

    name = "conv2d"
    lin1 = lin2 = lin1_no_bias = staticmethod(_same_conv)
    lin1_adjoint = lin2_adjoint = staticmethod(_same_conv_adjoint)
    lin1_weight_grad = lin2_weight_grad = staticmethod(_same_conv_weight_grad)

    @staticmethod
    def smap(w2: Tensor, x: Tensor) -> Tensor:
        """S[c,i,j] = Σ_{u,v} W2.sum(0)[c,u,v] R[u,i] Q[v,j], shape (Cm, H, W); x gives (H, W) only."""
        h, w = x.shape[-2:]
        r = border_matrix(w2.shape[2], h, w2)
        q = border_matrix(w2.shape[3], w, w2)
        return torch.einsum("cuv,ui,vj->cij", w2.sum(0), r, q)

    @staticmethod
    def smap_adjoint(s_bar: Tensor, w2: Tensor) -> Tensor:
        """W̄2[o,c,u,v] += Σ_{i,j} S̄[c,i,j] R[u,i] Q[v,j] for every output channel o."""
        h, w = s_bar.shape[-2:]
        r = border_matrix(w2.shape[2], h, w2)
        q = border_matrix(w2.shape[3], w, w2)
        return torch.einsum("cij,ui,vj->cuv", s_bar, r, q).unsqueeze(0).expand_as(w2)

    @staticmethod
    def channel_sum(t):
        return t.sum((0, 2, 3))

    @staticmethod
    def sample_dot(u, v):
        return (u * v).sum((1, 2, 3), keepdim=True)


FAMILIES = {f.name: f for f in (MLPFamily, Conv2dFamily)}
