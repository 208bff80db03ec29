"""Per-sample (row) stages shared by the tiled MLP and the conv block: a sample is one row of
length L (D for the MLP, C·H·W for conv). Two-stage reductions: one program per (row, chunk) writes
a partial sum, the host adds the few chunk partials per row (deterministic), an elementwise pass
finishes. The (row, chunk) grid is flattened onto grid axis 0 (limit 2^31 − 1 programs): a 2-D
grid would cap the chunks of one row at 65,535, i.e. samples at 2^26 elements.

    forward:  Σ g²  →  r = sqrt(Σ g² + eps²)  →  y = F + (1−m)x + m·g/r,  ĝ = g/r
    backward: Σ ȳ(ĝ − x) (for ᾱ) and Σ ĝ·ȳ  →  ḡ = m(ȳ − ĝ⟨ĝ, ȳ⟩)/r   (second-order mode)
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .common import acc_dtype, acc_torch_dtype, launch_options
from .policy import ELEMENTWISE

BLOCK = ELEMENTWISE["BLOCK"]


@triton.jit
def _program(NCHUNK):
    """(row, chunk) of this program in the flattened grid."""
    pid = tl.program_id(0)
    return pid // NCHUNK, pid % NCHUNK


@triton.jit
def _chunk(row, chunk, L, BLOCK: tl.constexpr):
    cols = chunk * BLOCK + tl.arange(0, BLOCK)
    mask = cols < L
    return row.to(tl.int64) * L + cols, mask


@triton.jit
def row_sumsq_kernel(g_ptr, out_ptr, L, NCHUNK, ACC: tl.constexpr, BLOCK: tl.constexpr):
    row, chunk = _program(NCHUNK)
    offs, mask = _chunk(row, chunk, L, BLOCK)
    g = tl.load(g_ptr + offs, mask=mask, other=0.0).to(ACC)
    tl.store(out_ptr + tl.program_id(0), tl.sum(g * g, axis=0))  # part[row, chunk]


@triton.jit
def row_mix_kernel(f_ptr, x_ptr, g_ptr, r_ptr, alpha_ptr, y_ptr, ghat_ptr, L, NCHUNK,
                   NORMALIZE: tl.constexpr, ACC: tl.constexpr, BLOCK: tl.constexpr):
    row, chunk = _program(NCHUNK)
    offs, mask = _chunk(row, chunk, L, BLOCK)
    m = tl.sigmoid(tl.load(alpha_ptr).to(ACC))
    g = tl.load(g_ptr + offs, mask=mask, other=0.0).to(ACC)
    if NORMALIZE:
        g = g / tl.load(r_ptr + row).to(ACC)
    f = tl.load(f_ptr + offs, mask=mask, other=0.0).to(ACC)
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(ACC)
    tl.store(y_ptr + offs, (f + (1.0 - m) * x + m * g).to(y_ptr.dtype.element_ty), mask=mask)
    tl.store(ghat_ptr + offs, g.to(ghat_ptr.dtype.element_ty), mask=mask)


@triton.jit
def row_bwd_sums_kernel(ybar_ptr, ghat_ptr, x_ptr, out_ptr, L, NCHUNK,
                        ACC: tl.constexpr, BLOCK: tl.constexpr):
    """out[row, chunk] = (Σ ȳ(ĝ − x), Σ ĝȳ) over the chunk."""
    row, chunk = _program(NCHUNK)
    offs, mask = _chunk(row, chunk, L, BLOCK)
    yb = tl.load(ybar_ptr + offs, mask=mask, other=0.0).to(ACC)
    gh = tl.load(ghat_ptr + offs, mask=mask, other=0.0).to(ACC)
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(ACC)
    base = out_ptr + tl.program_id(0).to(tl.int64) * 2  # part[row, chunk, :]
    # ᾱ is one full reduction that may cancel: sum the products in float64 (as composite does).
    tl.store(base, tl.sum((yb * (gh - x)).to(tl.float64), axis=0))
    tl.store(base + 1, tl.sum(gh * yb, axis=0).to(tl.float64))


@triton.jit
def row_gbar_kernel(ybar_ptr, ghat_ptr, dot_ptr, r_ptr, alpha_ptr, gbar_ptr, L, NCHUNK,
                    NORMALIZE: tl.constexpr, ACC: tl.constexpr, BLOCK: tl.constexpr):
    """ḡ = (ḡ̂ − ĝ⟨ĝ, ḡ̂⟩)/r with ḡ̂ = mȳ (normalize=False: ḡ = mȳ)."""
    row, chunk = _program(NCHUNK)
    offs, mask = _chunk(row, chunk, L, BLOCK)
    m = tl.sigmoid(tl.load(alpha_ptr).to(ACC))
    g_bar = m * tl.load(ybar_ptr + offs, mask=mask, other=0.0).to(ACC)
    if NORMALIZE:
        gh = tl.load(ghat_ptr + offs, mask=mask, other=0.0).to(ACC)
        dot = m * tl.load(dot_ptr + row).to(ACC)
        g_bar = (g_bar - gh * dot) / tl.load(r_ptr + row).to(ACC)
    tl.store(gbar_ptr + offs, g_bar.to(gbar_ptr.dtype.element_ty), mask=mask)


def _grid(t: torch.Tensor):
    n = t.shape[0]
    length = t[0].numel() if n else 0
    return n, length, triton.cdiv(max(length, 1), BLOCK)


def norm_mix(f, x, g, alpha, normalize: bool, eps: float):
    """(y, ĝ, r) per sample from F, x, g (all contiguous, same shape); r is empty unless
    normalize."""
    n, length, chunks = _grid(g)
    acc = acc_dtype(g.dtype)
    y, g_hat = torch.empty_like(x), torch.empty_like(g)
    r = g.new_empty((0,), dtype=acc_torch_dtype(g.dtype))
    if n == 0:
        return y, g_hat, r
    if normalize:
        part = g.new_empty((n, chunks), dtype=r.dtype)
        row_sumsq_kernel[(n * chunks,)](g, part, length, chunks, ACC=acc,
                                        **launch_options(ELEMENTWISE))
        r = torch.sqrt(part.sum(1) + eps * eps)
    row_mix_kernel[(n * chunks,)](f, x, g, r, alpha, y, g_hat, length, chunks,
                                  NORMALIZE=normalize, ACC=acc, **launch_options(ELEMENTWISE))
    return y, g_hat, r


def bwd_rows(y_bar, g_hat, x, r, alpha, normalize: bool, detach: bool):
    """(Σ ȳ(ĝ − x) in float64, ḡ or None in detach mode)."""
    n, length, chunks = _grid(x)
    acc = acc_dtype(x.dtype)
    if n == 0:
        return torch.zeros((), dtype=torch.float64, device=x.device), (
            None if detach else torch.empty_like(x))
    part = x.new_empty((n, chunks, 2), dtype=torch.float64)
    row_bwd_sums_kernel[(n * chunks,)](y_bar, g_hat, x, part, length, chunks, ACC=acc,
                                       **launch_options(ELEMENTWISE))
    alpha_sum = part[..., 0].sum()
    if detach:
        return alpha_sum, None
    g_bar = torch.empty_like(x)
    dot = part[..., 1].sum(1).to(r.dtype if normalize else torch.float32)
    row_gbar_kernel[(n * chunks,)](y_bar, g_hat, dot, r, alpha, g_bar, length, chunks,
                                   NORMALIZE=normalize, ACC=acc, **launch_options(ELEMENTWISE))
    return alpha_sum, g_bar
