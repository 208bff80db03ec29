"""Conv block (docs/DESIGN.md §1, conv family): the convolutions run in torch (cuDNN on GPU); Triton does
every elementwise and reduction stage between them:

    smap          S[c,i,j] = Σ_{u,v} W2.sum(0)[c,u,v] R[u,i] Q[v,j]     (no ones-convolution)
    hidden        a = φ(z), d = φ'(z)·S                                  (one pass over z)
                  (the op saves x, z, ĝ, r — one hidden-sized tensor, as composite does —: a is
                  a forward temporary, rebuilt by zbar in the backward)
    rows.*        Σg², r, y = F + (1−m)x + m·ĝ;  backward ᾱ, ḡ           (per-sample reductions)
    zbar          z̄ = ā φ'(z) [+ d̄ S φ''(z)], d = φ'(z)·S and the per-sample terms d̄ φ'(z) of
                  S̄ = Σ_n d̄ φ'(z), summed over the batch by the host in a fixed order
                  (deterministic, no atomics); one program per (sample, 512 positions), so the
                  grid fills the GPU (a batch loop per position gave an EDSR block 144 programs)
    smap_adjoint  W̄2[o,c,u,v] += Σ_{i,j} S̄[c,i,j] R[u,i] Q[v,j]  — a rectangle sum of S̄[c]
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl
from torch.nn.grad import conv2d_input, conv2d_weight

from . import rows
from .activations import CODES, act_d1, act_d2, act_fn, activation_constexprs
from .common import acc_dtype, acc_torch_dtype, alpha_grad, launch_options
from .policy import ELEMENTWISE

BLOCK = ELEMENTWISE["BLOCK"]


@triton.jit
def smap_kernel(w2s_ptr, s_ptr, CM, H, W, KH, KW, ACC: tl.constexpr, BLOCK: tl.constexpr):
    """S over flat (c, i, j); tap (u, v) reaches output (i, j) when 0 ≤ i−u+KH//2 < H (W alike)."""
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < CM * H * W
    c = offs // (H * W)
    i = (offs // W) % H
    j = offs % W
    acc = tl.zeros([BLOCK], dtype=ACC)
    for u in range(0, KH):
        oi = i - u + KH // 2
        for v in range(0, KW):
            oj = j - v + KW // 2
            ok = mask & (oi >= 0) & (oi < H) & (oj >= 0) & (oj < W)
            acc += tl.load(w2s_ptr + (c * KH + u) * KW + v, mask=ok, other=0.0).to(ACC)
    tl.store(s_ptr + offs, acc, mask=mask)


@triton.jit
def smap_adjoint_kernel(sbar_ptr, out_ptr, H, W, KH, KW, ACC: tl.constexpr,
                        BLOCK_W: tl.constexpr):
    """out[c,u,v] = Σ S̄[c,i,j] over i ∈ [u−KH//2, u−KH//2+H) ∩ [0,H), j likewise: one program
    per (c, u, v)."""
    pid = tl.program_id(0)
    c = pid // (KH * KW)
    u = (pid // KW) % KH
    v = pid % KW
    i0 = tl.maximum(u - KH // 2, 0)
    i1 = tl.minimum(u - KH // 2 + H, H)
    j0 = tl.maximum(v - KW // 2, 0)
    j1 = tl.minimum(v - KW // 2 + W, W)
    acc = tl.zeros([BLOCK_W], dtype=ACC)
    for i in range(i0, i1):
        for jb in range(j0, j1, BLOCK_W):
            j = jb + tl.arange(0, BLOCK_W)
            acc += tl.load(sbar_ptr + (c * H + i) * W + j, mask=j < j1, other=0.0).to(ACC)
    tl.store(out_ptr + pid, tl.sum(acc, axis=0))


@triton.jit(do_not_specialize=["TOTAL"])
def hidden_kernel(z_ptr, s_ptr, a_ptr, d_ptr, TOTAL, PLANE, ACT: tl.constexpr,
                  ACC: tl.constexpr, BLOCK: tl.constexpr):
    """a = φ(z), d = φ'(z)·S over flat z (N·Cm·H·W); S repeats every PLANE = Cm·H·W elements."""
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < TOTAL
    z = tl.load(z_ptr + offs, mask=mask, other=0.0).to(ACC)
    s = tl.load(s_ptr + offs % PLANE, mask=mask, other=0.0).to(ACC)
    tl.store(a_ptr + offs, act_fn(z, ACT).to(a_ptr.dtype.element_ty), mask=mask)
    tl.store(d_ptr + offs, (act_d1(z, ACT) * s).to(d_ptr.dtype.element_ty), mask=mask)


@triton.jit(do_not_specialize=["TOTAL"])
def zbar_kernel(abar_ptr, dbar_ptr, z_ptr, s_ptr, zbar_ptr, d_ptr, sbar_ptr, a_ptr, TOTAL, PLANE,
                SECOND: tl.constexpr, ACT: tl.constexpr, D2_ZERO: tl.constexpr,
                ACC: tl.constexpr, BLOCK: tl.constexpr):
    """Over flat z (N·Cm·H·W; S repeats every PLANE elements): z̄ and (second order) d and the
    term d̄ φ'(z) of S̄ (in the accumulation type; the host sums it over the samples); a = φ(z)
    for W̄2 (not saved by the forward)."""
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < TOTAL
    s = tl.load(s_ptr + offs % PLANE, mask=mask, other=0.0).to(ACC)
    z = tl.load(z_ptr + offs, mask=mask, other=0.0).to(ACC)
    tl.store(a_ptr + offs, act_fn(z, ACT).to(a_ptr.dtype.element_ty), mask=mask)
    d1 = act_d1(z, ACT)
    z_bar = tl.load(abar_ptr + offs, mask=mask, other=0.0).to(ACC) * d1
    if SECOND:
        d_bar = tl.load(dbar_ptr + offs, mask=mask, other=0.0).to(ACC)
        if not D2_ZERO:
            z_bar += d_bar * s * act_d2(z, ACT)
        tl.store(sbar_ptr + offs, d_bar * d1, mask=mask)
        tl.store(d_ptr + offs, (d1 * s).to(d_ptr.dtype.element_ty), mask=mask)
    tl.store(zbar_ptr + offs, z_bar.to(zbar_ptr.dtype.element_ty), mask=mask)


@triton.jit(do_not_specialize=["TOTAL"])
def skip_grad_kernel(xbar_ptr, ybar_ptr, alpha_ptr, TOTAL, ACC: tl.constexpr,
                     BLOCK: tl.constexpr):
    """x̄ += (1 − m)·ȳ in place (m read on device: no host sync)."""
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < TOTAL
    m = tl.sigmoid(tl.load(alpha_ptr).to(ACC))
    xb = tl.load(xbar_ptr + offs, mask=mask, other=0.0).to(ACC)
    yb = tl.load(ybar_ptr + offs, mask=mask, other=0.0).to(ACC)
    tl.store(xbar_ptr + offs, (xb + (1.0 - m) * yb).to(xbar_ptr.dtype.element_ty), mask=mask)


def _pad(w):
    return (w.shape[2] // 2, w.shape[3] // 2)


def smap(w2, h: int, w: int):
    """S (Cm, H, W) in the accumulation dtype."""
    cm, kh, kw = w2.shape[1:]
    w2s = w2.sum(0, dtype=acc_torch_dtype(w2.dtype)).contiguous()
    s = w2s.new_empty((cm, h, w))
    smap_kernel[(triton.cdiv(s.numel(), BLOCK),)](w2s, s, cm, h, w, kh, kw,
                                                 ACC=acc_dtype(w2.dtype),
                                                 **launch_options(ELEMENTWISE))
    return s


def smap_adjoint(s_bar, w2):
    """The (Cm, k, k) W̄2 term every output channel receives."""
    cm, kh, kw = w2.shape[1:]
    h, w = s_bar.shape[1:]
    out = s_bar.new_empty((cm, kh, kw))
    smap_adjoint_kernel[(out.numel(),)](s_bar, out, h, w, kh, kw, ACC=acc_dtype(w2.dtype),
                                        BLOCK_W=triton.next_power_of_2(min(w, 128)))
    return out


def conv_fwd(x, w1, b1, w2, b2, alpha, activation: str, normalize: bool, eps: float):
    """(y, z, ĝ, r) for x (N, C, H, W); a = φ(z) is a temporary (the backward rebuilds it)."""
    x = x.contiguous()
    z = F.conv2d(x, w1, b1, padding=_pad(w1)).contiguous()
    s = smap(w2, *x.shape[2:])
    a, d = torch.empty_like(z), torch.empty_like(z)
    if z.numel():
        hidden_kernel[(triton.cdiv(z.numel(), BLOCK),)](
            z, s, a, d, z.numel(), s.numel(), ACT=CODES[activation], ACC=acc_dtype(x.dtype),
            **launch_options(ELEMENTWISE))
    f = F.conv2d(a, w2, b2, padding=_pad(w2)).contiguous()
    g = F.conv_transpose2d(d, w1, padding=_pad(w1)).contiguous()
    y, g_hat, r = rows.norm_mix(f, x, g, alpha, normalize, eps)
    return y, z, g_hat, r


def conv_bwd(y_bar, x, w1, b1, w2, alpha, z, g_hat, r, activation: str, normalize: bool,
             detach: bool):
    """(x̄, W̄1, b̄1, W̄2, b̄2, ᾱ) for the conv block."""
    x, y_bar = x.contiguous(), y_bar.contiguous()
    alpha_sum, g_bar = rows.bwd_rows(y_bar, g_hat, x, r, alpha, normalize, detach)
    a_bar = conv2d_input(z.shape, w2, y_bar, padding=_pad(w2)).contiguous()
    d_bar = None if detach else F.conv2d(g_bar, w1, padding=_pad(w1)).contiguous()
    s = smap(w2, *x.shape[2:])
    z_bar, a = torch.empty_like(z), torch.empty_like(z)
    d = None if detach else torch.empty_like(z)
    s_terms = z_bar if detach else torch.empty_like(z, dtype=s.dtype)  # d̄ φ'(z) per sample
    if z.numel():
        zbar_kernel[(triton.cdiv(z.numel(), BLOCK),)](
            a_bar, a_bar if detach else d_bar, z, s, z_bar, z_bar if detach else d, s_terms, a,
            z.numel(), s.numel(), SECOND=not detach, **activation_constexprs(activation),
            ACC=acc_dtype(x.dtype), **launch_options(ELEMENTWISE))
    w2_bar = conv2d_weight(a, w2.shape, y_bar, padding=_pad(w2))
    if detach:
        w1_bar = conv2d_weight(x, w1.shape, z_bar, padding=_pad(w1))
    else:
        s_bar = s_terms.sum(0)  # over the samples, in a fixed order
        w2_bar = w2_bar + smap_adjoint(s_bar, w2).to(w2.dtype).unsqueeze(0)
        w1_bar = conv2d_weight(torch.cat([x, g_bar]), w1.shape, torch.cat([z_bar, d]),
                               padding=_pad(w1))
    x_bar = conv2d_input(x.shape, w1, z_bar, padding=_pad(w1)).contiguous()
    if x_bar.numel():
        skip_grad_kernel[(triton.cdiv(x_bar.numel(), BLOCK),)](
            x_bar, y_bar, alpha, x_bar.numel(), ACC=acc_dtype(x.dtype),
            **launch_options(ELEMENTWISE))
    acc = acc_torch_dtype(x.dtype)
    return (x_bar, w1_bar, z_bar.sum((0, 2, 3), dtype=acc).to(w1.dtype), w2_bar,
            y_bar.sum((0, 2, 3), dtype=acc).to(w2.dtype), alpha_grad(alpha, alpha_sum))
