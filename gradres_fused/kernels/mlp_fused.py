"""Fully fused narrow MLP block (D, H ≤ 128): the whole gradient residual block for a tile of rows
in one kernel, forward and backward (both modes).

Forward, per tile of BLOCK_M rows (x read once, y written once, nothing else stored):
    z = x W1ᵀ + b1,  a = φ(z),  d = φ'(z)·s  (s = W2ᵀ1 from the W2 tile),
    F = a W2ᵀ + b2,  g = d W1,  r = sqrt(‖g‖² + eps²),  y = F + (1−m)x + m·g/r.
Backward: a persistent grid (policy.PERSISTENT_PROGRAMS programs, the same on every GPU) walks
the row tiles, recomputes z, a, d, g, r from x (cheaper than storing and re-reading N×H
intermediates: the block is bandwidth-bound at these widths), writes x̄ per tile and accumulates
W̄1, W̄2, b̄1, b̄2, s̄, ᾱ in registers; each program stores one partial and the host sums the
partials (deterministic, no atomics, bitwise the same on every GPU). docs/DESIGN.md §2 formulas.

Row tiles come from the launch policy (kernels/policy.py `fused_mlp`): one config per width and
dtype whatever the batch; N is `do_not_specialize`, so a new batch size compiles nothing.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .activations import act_d1, act_d2, act_fn, activation_constexprs
from .common import (AUTOTUNE, acc_dtype, acc_torch_dtype, alpha_grad, arch, autotuned,
                     dot_precision, launch_options, num_programs, pow2)
from . import policy

MAX_WIDTH = policy.FUSED_MAX_WIDTH  # D and H up to this run fully fused; wider: tiled GEMM path


def fits(dim: int, hidden: int, dtype: torch.dtype, device: torch.device) -> bool:
    """Whether the fused kernels take this width: D, H ≤ MAX_WIDTH and a row tile fits the
    device's shared memory for this dtype and dot precision (float32 with TF32 dots at the widest
    widths does not, on sm_80 or sm_90: those go to the tiled path)."""
    if dim > MAX_WIDTH or hidden > MAX_WIDTH:
        return False
    elem = torch.empty((), dtype=dtype).element_size()
    return policy.fused_fits(elem, max(dim, 1), max(hidden, 1), arch(device), _tf32(dtype))


def _tf32(dtype: torch.dtype) -> bool:
    return dot_precision(dtype) == "tf32"


def _prune(kernel_name):
    def prune(configs, named_args, **kwargs):
        """GRADRES_AUTOTUNE=1: the candidates whose row tile fits this width and device."""
        x = named_args["x_ptr"]
        return policy.prune(kernel_name, configs, arch(x.device), x.element_size(),
                            dim=named_args["D"], hidden=named_args["H"], tf32=_tf32(x.dtype))
    return prune


@triton.jit
def _load_weights(w1_ptr, w2_ptr, b1_ptr, D, H, sw1h, sw1d, sw2d, sw2h,
                  HAS_B1: tl.constexpr, ACC: tl.constexpr,
                  BLOCK_D: tl.constexpr, BLOCK_H: tl.constexpr):
    """W1 (BH, BD) and W2 (BD, BH) tiles in the input dtype (zero-padded), s = W2ᵀ1 and b1."""
    dd = tl.arange(0, BLOCK_D)
    hh = tl.arange(0, BLOCK_H)
    w1 = tl.load(w1_ptr + hh[:, None] * sw1h + dd[None, :] * sw1d,
                 mask=(hh[:, None] < H) & (dd[None, :] < D), other=0.0)
    w2 = tl.load(w2_ptr + dd[:, None] * sw2d + hh[None, :] * sw2h,
                 mask=(dd[:, None] < D) & (hh[None, :] < H), other=0.0)
    s = tl.sum(w2.to(ACC), axis=0)
    if HAS_B1:
        b1 = tl.load(b1_ptr + hh, mask=hh < H, other=0.0).to(ACC)
    else:
        b1 = tl.zeros([BLOCK_H], dtype=ACC)
    return w1, w2, s, b1


@triton.jit
def _hidden(x, w1, b1, s, H, ACT: tl.constexpr, PREC: tl.constexpr, BLOCK_H: tl.constexpr):
    """z, φ'(z) and d = φ'(z)·s for a row tile; padded hidden columns are exactly zero."""
    hmask = tl.arange(0, BLOCK_H)[None, :] < H
    z = tl.dot(x, tl.trans(w1), input_precision=PREC) + b1[None, :]
    d1 = tl.where(hmask, act_d1(z, ACT), 0.0)
    return z, d1, d1 * s[None, :]


@triton.jit
def _normalize(g, rmask, eps, NORMALIZE: tl.constexpr):
    """ĝ and r per row (r = 1 where not normalized, and on padded rows so eps = 0 cannot 0/0)."""
    if NORMALIZE:
        r = tl.sqrt(tl.sum(g * g, axis=1) + eps * eps)
        r = tl.where(rmask, r, 1.0)
    else:
        r = tl.where(rmask, 1.0, 1.0).to(g.dtype)
    return g / r[:, None], r


@autotuned("mlp_fused_fwd", key=["ROWS_KEY", "D", "H"], prune=_prune("mlp_fused_fwd"))
@triton.jit(do_not_specialize=["N", "ROWS_KEY"])
def mlp_fused_fwd_kernel(
        x_ptr, w1_ptr, b1_ptr, w2_ptr, b2_ptr, alpha_ptr, y_ptr,
        N, ROWS_KEY, D, H, eps,
        sxn, sxd, sw1h, sw1d, sw2d, sw2h, syn, syd,
        ACT: tl.constexpr, HAS_B1: tl.constexpr, HAS_B2: tl.constexpr,
        NORMALIZE: tl.constexpr, ACC: tl.constexpr, PREC: tl.constexpr,
        BLOCK_D: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_M: tl.constexpr):
    dt = x_ptr.dtype.element_ty
    w1, w2, s, b1 = _load_weights(w1_ptr, w2_ptr, b1_ptr, D, H, sw1h, sw1d, sw2d, sw2h,
                                  HAS_B1, ACC, BLOCK_D, BLOCK_H)
    dd = tl.arange(0, BLOCK_D)
    hh = tl.arange(0, BLOCK_H)
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    rmask = rows < N
    xmask = rmask[:, None] & (dd[None, :] < D)
    rows64 = rows.to(tl.int64)
    x = tl.load(x_ptr + rows64[:, None] * sxn + dd[None, :] * sxd, mask=xmask, other=0.0)

    z, d1, d = _hidden(x, w1, b1, s, H, ACT, PREC, BLOCK_H)
    a = tl.where(hh[None, :] < H, act_fn(z, ACT), 0.0)
    f = tl.dot(a.to(dt), tl.trans(w2), input_precision=PREC)
    if HAS_B2:
        f += tl.load(b2_ptr + dd, mask=dd < D, other=0.0).to(ACC)[None, :]
    g = tl.dot(d.to(dt), w1, input_precision=PREC)
    g_hat, r = _normalize(g, rmask, eps, NORMALIZE)
    m = tl.sigmoid(tl.load(alpha_ptr).to(ACC))
    y = f + (1.0 - m) * x.to(ACC) + m * g_hat
    tl.store(y_ptr + rows64[:, None] * syn + dd[None, :] * syd, y.to(y_ptr.dtype.element_ty),
             mask=xmask)


@autotuned("mlp_fused_bwd", key=["ROWS_KEY", "D", "H", "DETACH"],
           prune=_prune("mlp_fused_bwd"))
@triton.jit(do_not_specialize=["N", "ROWS_KEY"])
def mlp_fused_bwd_kernel(
        ybar_ptr, x_ptr, w1_ptr, b1_ptr, w2_ptr, alpha_ptr,
        xbar_ptr, w1p_ptr, w2p_ptr, vecp_ptr, alphap_ptr,
        N, ROWS_KEY, D, H, eps,
        sbn, sbd, sxn, sxd, sw1h, sw1d, sw2d, sw2h, son, sod,
        ACT: tl.constexpr, HAS_B1: tl.constexpr, NORMALIZE: tl.constexpr,
        DETACH: tl.constexpr, D2_ZERO: tl.constexpr, ACC: tl.constexpr, PREC: tl.constexpr,
        BLOCK_D: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_M: tl.constexpr):
    """Partials per program p: w1p[p] (H, D) = W̄1, w2p[p] (D, H) = W̄2 without s̄, vecp[p] =
    [b̄1 (H) | b̄2 (D) | s̄ (H)], alphap[p] = Σ ȳ·(ĝ − x) (float64; m(1−m) applied by the host)."""
    dt = x_ptr.dtype.element_ty
    pid = tl.program_id(0)
    nprog = tl.num_programs(0)
    w1, w2, s, b1 = _load_weights(w1_ptr, w2_ptr, b1_ptr, D, H, sw1h, sw1d, sw2d, sw2h,
                                  HAS_B1, ACC, BLOCK_D, BLOCK_H)
    m = tl.sigmoid(tl.load(alpha_ptr).to(ACC))
    dd = tl.arange(0, BLOCK_D)
    hh = tl.arange(0, BLOCK_H)
    hmask = hh[None, :] < H

    acc_w1 = tl.zeros([BLOCK_H, BLOCK_D], dtype=ACC)
    acc_w2 = tl.zeros([BLOCK_D, BLOCK_H], dtype=ACC)
    acc_b1 = tl.zeros([BLOCK_H], dtype=ACC)
    acc_b2 = tl.zeros([BLOCK_D], dtype=ACC)
    acc_s = tl.zeros([BLOCK_H], dtype=ACC)
    acc_alpha = tl.zeros([BLOCK_M], dtype=tl.float64)
    for tile in range(pid, tl.cdiv(N, BLOCK_M), nprog):
        rows = tile * BLOCK_M + tl.arange(0, BLOCK_M)
        rmask = rows < N
        xmask = rmask[:, None] & (dd[None, :] < D)
        rows64 = rows.to(tl.int64)
        x = tl.load(x_ptr + rows64[:, None] * sxn + dd[None, :] * sxd, mask=xmask, other=0.0)
        yb = tl.load(ybar_ptr + rows64[:, None] * sbn + dd[None, :] * sbd, mask=xmask, other=0.0)
        yb_acc = yb.to(ACC)

        # Recompute the forward intermediates of this tile.
        z, d1, d = _hidden(x, w1, b1, s, H, ACT, PREC, BLOCK_H)
        a = tl.where(hmask, act_fn(z, ACT), 0.0)
        g = tl.dot(d.to(dt), w1, input_precision=PREC)
        g_hat, r = _normalize(g, rmask, eps, NORMALIZE)
        g_hat = tl.where(xmask, g_hat, 0.0)

        # Shared by both modes: ᾱ, b̄2, W̄2 = ȳᵀa, z̄ = (ȳ W2) ⊙ φ'(z).
        acc_alpha += tl.sum((yb_acc * (g_hat - x.to(ACC))).to(tl.float64), axis=1)
        acc_b2 += tl.sum(yb_acc, axis=0)
        acc_w2 += tl.dot(tl.trans(yb), a.to(dt), input_precision=PREC)
        z_bar = tl.dot(yb, w2, input_precision=PREC) * d1
        if not DETACH:
            # Through ĝ: ḡ = (mȳ − ĝ⟨ĝ, mȳ⟩)/r, d̄ = ḡ W1ᵀ, z̄ += d̄ s φ''(z), s̄ += Σ d̄ φ'(z),
            # W̄1 += dᵀ ḡ.
            gh_bar = m * yb_acc
            if NORMALIZE:
                g_bar = (gh_bar - g_hat * tl.sum(g_hat * gh_bar, axis=1)[:, None]) / r[:, None]
            else:
                g_bar = gh_bar
            d_bar = tl.dot(g_bar.to(dt), tl.trans(w1), input_precision=PREC)
            if not D2_ZERO:
                z_bar += d_bar * s[None, :] * act_d2(z, ACT)
            acc_s += tl.sum(d_bar * d1, axis=0)
            acc_w1 += tl.dot(tl.trans(d.to(dt)), g_bar.to(dt), input_precision=PREC)
        z_bar = tl.where(rmask[:, None] & hmask, z_bar, 0.0)
        acc_w1 += tl.dot(tl.trans(z_bar.to(dt)), x, input_precision=PREC)
        acc_b1 += tl.sum(z_bar, axis=0)
        x_bar = (1.0 - m) * yb_acc + tl.dot(z_bar.to(dt), w1, input_precision=PREC)
        tl.store(xbar_ptr + rows64[:, None] * son + dd[None, :] * sod,
                 x_bar.to(xbar_ptr.dtype.element_ty), mask=xmask)

    tl.store(w1p_ptr + pid * H * D + hh[:, None] * D + dd[None, :], acc_w1,
             mask=(hh[:, None] < H) & (dd[None, :] < D))
    tl.store(w2p_ptr + pid * D * H + dd[:, None] * H + hh[None, :], acc_w2,
             mask=(dd[:, None] < D) & (hh[None, :] < H))
    vec = vecp_ptr + pid * (2 * H + D)
    tl.store(vec + hh, acc_b1, mask=hh < H)
    tl.store(vec + H + dd, acc_b2, mask=dd < D)
    tl.store(vec + H + D + hh, acc_s, mask=hh < H)
    tl.store(alphap_ptr + pid, tl.sum(acc_alpha, axis=0))


def _options(kernel_name, x, w1, n, activation, normalize):
    """Constexprs and launch options: the policy's config (BLOCK_M, BLOCK_D, BLOCK_H, warps,
    stages), or under GRADRES_AUTOTUNE=1 only BLOCK_D/BLOCK_H (the autotuner picks the rest)."""
    dim, hidden = x.shape[1], w1.shape[0]
    meta = dict(ACT=activation_constexprs(activation)["ACT"], NORMALIZE=normalize,
                ACC=acc_dtype(x.dtype), PREC=dot_precision(x.dtype))
    if AUTOTUNE:
        return dict(meta, BLOCK_D=pow2(dim), BLOCK_H=pow2(hidden))
    cfg = policy.fused_mlp(kernel_name, x.element_size(), dim, hidden, n, arch(x.device),
                           _tf32(x.dtype))
    return dict(meta, **launch_options(cfg))


def mlp_fwd(x, w1, b1, w2, b2, alpha, activation: str, normalize: bool, eps: float):
    """y for rows x (N, D); nothing else is stored (the backward recomputes from x)."""
    n, dim = x.shape
    hidden = w1.shape[0]
    y = torch.empty_like(x, memory_format=torch.contiguous_format)
    if n == 0:
        return y
    grid = lambda meta: (triton.cdiv(n, meta["BLOCK_M"]),)  # noqa: E731
    mlp_fused_fwd_kernel[grid](
        x, w1, w1 if b1 is None else b1, w2, w2 if b2 is None else b2, alpha, y,
        n, policy.row_bucket(n), dim, hidden, eps, *x.stride(), *w1.stride(), *w2.stride(),
        *y.stride(), HAS_B1=b1 is not None, HAS_B2=b2 is not None,
        **_options("mlp_fused_fwd", x, w1, n, activation, normalize))
    return y


def mlp_bwd(y_bar, x, w1, b1, w2, alpha, activation: str, normalize: bool, eps: float,
            detach: bool):
    """(x̄, W̄1, b̄1, W̄2, b̄2, ᾱ) of docs/DESIGN.md §2 from ȳ and the forward's inputs."""
    n, dim = x.shape
    hidden = w1.shape[0]
    acc = acc_torch_dtype(x.dtype)
    x_bar = torch.empty_like(x, memory_format=torch.contiguous_format)
    # Sized for the smallest row tile any config uses: programs without a tile store zeros.
    progs = num_programs(x.device, triton.cdiv(max(n, 1), 16))
    w1p = x.new_empty((progs, hidden, dim), dtype=acc)
    w2p = x.new_empty((progs, dim, hidden), dtype=acc)
    vecp = x.new_empty((progs, 2 * hidden + dim), dtype=acc)
    alphap = x.new_empty((progs,), dtype=torch.float64)
    if n == 0:
        for t in (w1p, w2p, vecp, alphap):
            t.zero_()
    else:
        mlp_fused_bwd_kernel[(progs,)](
            y_bar, x, w1, w1 if b1 is None else b1, w2, alpha, x_bar, w1p, w2p, vecp, alphap,
            n, policy.row_bucket(n), dim, hidden, eps, *y_bar.stride(), *x.stride(),
            *w1.stride(), *w2.stride(), *x_bar.stride(), HAS_B1=b1 is not None, DETACH=detach,
            D2_ZERO=activation_constexprs(activation)["D2_ZERO"],
            **_options("mlp_fused_bwd", x, w1, n, activation, normalize))
    vec = vecp.sum(0)
    b1_bar, b2_bar, s_bar = vec[:hidden], vec[hidden:hidden + dim], vec[hidden + dim:]
    w2_bar = w2p.sum(0)
    if not detach:
        w2_bar += s_bar  # smap adjoint: every row of W2 gets s̄
    alpha_bar = alpha_grad(alpha, alphap.sum())
    # b̄1 and b̄2 are slices of one buffer: copy, so the op's outputs never alias.
    return (x_bar, w1p.sum(0).to(w1.dtype), b1_bar.to(w1.dtype, copy=True), w2_bar.to(w2.dtype),
            b2_bar.to(w2.dtype, copy=True), alpha_bar)
