"""Tiled GEMM with fused epilogues for wide MLP blocks (D or H > 128), and the wide block's
forward and backward built from it (docs/DESIGN.md §2; one GEMM launch per GEMM unit of the work count).

One kernel, C[M, N] = A·B with arbitrary strides (so every transpose is free), in two shapes:
- stacked: one accumulator over two (A, B) pairs, C = A1·B1 + A2·B2 (the W̄1 = [z̄; d]ᵀ[x; ḡ] GEMM);
- dual:    two accumulators sharing the M×N tile and the K loop, C1 = A1·B1, C2 = A2·B2
           (F = a W2ᵀ with g = d W1 in the forward; ā = ȳ W2 with d̄ = ḡ W1ᵀ in the backward).
Epilogues (EPI):
  0 PLAIN   C (+ vec[n] when HAS_VEC: W̄2 += 1 s̄ᵀ)
  1 HIDDEN  z = C + b1;  a = φ(z);  d = φ'(z)·s          → z, a, d
  2 FG      F = C1 + b2;  g = C2                          → F, g
  3 ZBAR    z̄ = C1 φ'(z) [+ C2 s φ''(z)], d = φ'(z)·s, a = φ(z) → z̄, d, a, per-M-tile column
            sums of z̄ (b̄1) and of C2 φ'(z) (s̄); a is rebuilt here from z rather than saved by
            the forward (the op keeps x, z, ĝ, r: one hidden-sized tensor, as composite does)
  4 XBAR    x̄ = C + (1−m)·ȳ
Operands go to tl.dot in the input dtype (bf16/fp16 tensor cores, fp32 as TF32 only when torch
allows it) with float32 accumulation; epilogue math in the accumulation type.

Tiles come from the launch policy (kernels/policy.py `gemm`): the batch is the M extent of the
activation GEMMs and the K extent of the weight-gradient GEMMs, and enters only as its row bucket;
the exact extents are `do_not_specialize`, so a new batch size compiles nothing new in a seen
bucket.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .activations import act_d1, act_d2, act_fn, activation_constexprs
from .common import (AUTOTUNE, acc_dtype, acc_torch_dtype, alpha_grad, arch, autotuned,
                     dot_precision, launch_options)
from . import policy, rows

PLAIN, HIDDEN, FG, ZBAR, XBAR = range(5)


@triton.jit
def _tile_loop(acc, a_ptr, b_ptr, k_lo, k_hi, sam, sak, sbk, sbn, rm64, rn64, mmask, nmask,
               PREC: tl.constexpr, BLOCK_K: tl.constexpr):
    """acc += A[:, k_lo:k_hi] · B[k_lo:k_hi, :] for this tile."""
    rk = tl.arange(0, BLOCK_K)
    for k0 in range(k_lo, k_hi, BLOCK_K):
        kk = (k0 + rk).to(tl.int64)
        kmask = kk < k_hi
        a = tl.load(a_ptr + rm64[:, None] * sam + kk[None, :] * sak,
                    mask=mmask[:, None] & kmask[None, :], other=0.0)
        b = tl.load(b_ptr + kk[:, None] * sbk + rn64[None, :] * sbn,
                    mask=kmask[:, None] & nmask[None, :], other=0.0)
        acc += tl.dot(a, b, input_precision=PREC)
    return acc


def _prune(configs, named_args, **kwargs):
    """GRADRES_AUTOTUNE=1: the candidates that fit this launch's extents and device."""
    a1 = named_args["a1_ptr"]
    return policy.prune(policy.GEMM, configs, arch(a1.device), a1.element_size(),
                        m=named_args["M"], n=named_args["N"], k=max(named_args["K1"], 1))


# Autotuning keys on the row buckets (M_KEY, K_KEY) and the kernel variant, never on exact
# extents; M, K1, K2 are not specialised on (any of them may be the batch). The per-M-tile column
# sums (col1, col2) are sized for the smallest candidate BLOCK_M; a larger tile leaves rows
# unwritten, so the autotuner zeroes them after timing the configs.
@autotuned(policy.GEMM, key=["M_KEY", "N", "K_KEY", "EPI", "DUAL", "HAS_PAIR2", "HAS_VEC"],
           prune=_prune, reset_to_zero=["col1_ptr", "col2_ptr"])
@triton.jit(do_not_specialize=["M", "K1", "K2", "M_KEY", "K_KEY", "K_CHUNK", "scs"])
def gemm_kernel(
        a1_ptr, b1_ptr, a2_ptr, b2_ptr, c1_ptr, c2_ptr, c3_ptr,
        vec_ptr, s_ptr, aux_ptr, alpha_ptr, col1_ptr, col2_ptr,
        M, N, K1, K2, M_KEY, K_KEY, K_CHUNK,
        sa1m, sa1k, sb1k, sb1n, sa2m, sa2k, sb2k, sb2n, scm, scn, scs, sxm, sxn,
        EPI: tl.constexpr, DUAL: tl.constexpr, HAS_PAIR2: tl.constexpr, HAS_VEC: tl.constexpr,
        ACT: tl.constexpr, D2_ZERO: tl.constexpr, ACC: tl.constexpr, PREC: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
        GROUP_M: tl.constexpr):
    # Grouped tile order: GROUP_M row tiles share each B column panel while it is in L2.
    pid = tl.program_id(0)
    grid_m = tl.cdiv(M, BLOCK_M)
    grid_n = tl.cdiv(N, BLOCK_N)
    width = GROUP_M * grid_n
    first_m = (pid // width) * GROUP_M
    group = tl.minimum(grid_m - first_m, GROUP_M)
    pid_m = first_m + (pid % width) % group
    pid_n = (pid % width) // group

    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mmask, nmask = rm < M, rn < N
    rm64, rn64 = rm.to(tl.int64), rn.to(tl.int64)
    cmask = mmask[:, None] & nmask[None, :]
    # Split-K (grid axis 1): this program sums k in [split·K_CHUNK, (split+1)·K_CHUNK) into
    # slice `split` of C (stride scs); unsplit launches have one split with K_CHUNK ≥ K.
    split = tl.program_id(1)
    k_lo = split * K_CHUNK
    c_offs = split.to(tl.int64) * scs + rm64[:, None] * scm + rn64[None, :] * scn

    acc1 = tl.zeros([BLOCK_M, BLOCK_N], dtype=ACC)
    acc1 = _tile_loop(acc1, a1_ptr, b1_ptr, k_lo, tl.minimum(K1, k_lo + K_CHUNK), sa1m, sa1k,
                      sb1k, sb1n, rm64, rn64, mmask, nmask, PREC, BLOCK_K)
    if DUAL:
        acc2 = tl.zeros([BLOCK_M, BLOCK_N], dtype=ACC)
        if HAS_PAIR2:
            acc2 = _tile_loop(acc2, a2_ptr, b2_ptr, k_lo, tl.minimum(K2, k_lo + K_CHUNK), sa2m,
                              sa2k, sb2k, sb2n, rm64, rn64, mmask, nmask, PREC, BLOCK_K)
    elif HAS_PAIR2:
        acc1 = _tile_loop(acc1, a2_ptr, b2_ptr, k_lo, tl.minimum(K2, k_lo + K_CHUNK), sa2m, sa2k,
                          sb2k, sb2n, rm64, rn64, mmask, nmask, PREC, BLOCK_K)

    out_ty = c1_ptr.dtype.element_ty
    if EPI == 0:  # PLAIN
        if HAS_VEC:
            acc1 += tl.load(vec_ptr + rn, mask=nmask, other=0.0).to(ACC)[None, :]
        tl.store(c1_ptr + c_offs, acc1.to(out_ty), mask=cmask)
    elif EPI == 1:  # HIDDEN: c1 = z, c2 = a, c3 = d
        if HAS_VEC:
            acc1 += tl.load(vec_ptr + rn, mask=nmask, other=0.0).to(ACC)[None, :]
        s = tl.load(s_ptr + rn, mask=nmask, other=0.0).to(ACC)
        tl.store(c1_ptr + c_offs, acc1.to(out_ty), mask=cmask)
        tl.store(c2_ptr + c_offs, act_fn(acc1, ACT).to(out_ty), mask=cmask)
        tl.store(c3_ptr + c_offs, (act_d1(acc1, ACT) * s[None, :]).to(out_ty), mask=cmask)
    elif EPI == 2:  # FG: c1 = F (+ b2), c2 = g
        if HAS_VEC:
            acc1 += tl.load(vec_ptr + rn, mask=nmask, other=0.0).to(ACC)[None, :]
        tl.store(c1_ptr + c_offs, acc1.to(out_ty), mask=cmask)
        tl.store(c2_ptr + c_offs, acc2.to(out_ty), mask=cmask)
    elif EPI == 3:  # ZBAR: aux = z; c1 = z̄, c2 = d, c3 = a; col1 = Σ z̄, col2 = Σ d̄ φ'(z)
        z = tl.load(aux_ptr + rm64[:, None] * sxm + rn64[None, :] * sxn, mask=cmask,
                    other=0.0).to(ACC)
        d1 = act_d1(z, ACT)
        z_bar = acc1 * d1
        if HAS_PAIR2:
            s = tl.load(s_ptr + rn, mask=nmask, other=0.0).to(ACC)
            if not D2_ZERO:
                z_bar += acc2 * s[None, :] * act_d2(z, ACT)
            tl.store(c2_ptr + c_offs, (d1 * s[None, :]).to(out_ty), mask=cmask)
            s_part = tl.sum(tl.where(cmask, acc2 * d1, 0.0), axis=0)
            tl.store(col2_ptr + pid_m.to(tl.int64) * N + rn, s_part, mask=nmask)
        z_bar = tl.where(cmask, z_bar, 0.0)
        tl.store(c1_ptr + c_offs, z_bar.to(out_ty), mask=cmask)
        tl.store(col1_ptr + pid_m.to(tl.int64) * N + rn, tl.sum(z_bar, axis=0), mask=nmask)
        # Last, once the z̄ terms are stored (fewer values live: gelu's second order spilled
        # with it first): a = φ(z) for the W̄2 GEMM.
        tl.store(c3_ptr + c_offs, act_fn(z, ACT).to(out_ty), mask=cmask)
    else:  # XBAR: aux = ȳ
        m = tl.sigmoid(tl.load(alpha_ptr).to(ACC))
        yb = tl.load(aux_ptr + rm64[:, None] * sxm + rn64[None, :] * sxn, mask=cmask,
                     other=0.0).to(ACC)
        tl.store(c1_ptr + c_offs, (acc1 + (1.0 - m) * yb).to(out_ty), mask=cmask)


def config(a, m: int, n: int, k: int, rows_in: str = "m", dual: bool = False) -> policy.Config:
    """The default policy's tiles for C[m, n] = A[m, k]·B (A the tensor giving dtype and device)."""
    return policy.gemm(a.element_size(), m, n, k, arch(a.device), rows_in=rows_in, dual=dual)


def gemm(c1, pair1, pair2=None, *, epi=PLAIN, dual=False, c2=None, c3=None, vec=None, s=None,
         aux=None, alpha=None, col1=None, col2=None, activation="relu", rows_in="m", cfg=None,
         k_chunk=None):
    """Launch gemm_kernel. pair = (A, B) as 2-D views (A: M×K, B: K×N, any strides); `rows_in`
    names the extent that is the batch; `cfg` the policy config when the caller already chose it
    (the column-sum buffers are sized by its BLOCK_M). `k_chunk`: split-K (PLAIN epilogue without
    vec only), c1 a (splits, M, N) buffer getting one partial product per K chunk."""
    a1, b1 = pair1
    m, k1 = a1.shape
    n = b1.shape[1]
    a2, b2 = pair2 if pair2 is not None else (a1, b1)
    k2 = a2.shape[1] if pair2 is not None else 0
    dummy = c1
    options = {} if AUTOTUNE else launch_options(cfg or config(a1, m, n, k1, rows_in, dual))
    chunk = k_chunk or max(k1, k2, 1)
    splits = triton.cdiv(max(k1, k2, 1), chunk)
    grid = lambda meta: (triton.cdiv(m, meta["BLOCK_M"]) * triton.cdiv(n, meta["BLOCK_N"]),  # noqa: E731
                         splits)
    c_view = c1[0] if k_chunk else c1  # (M, N) strides of a split-K buffer's slices
    aux_t = aux if aux is not None else c1
    gemm_kernel[grid](
        a1, b1, a2, b2, c1, dummy if c2 is None else c2, dummy if c3 is None else c3,
        dummy if vec is None else vec, dummy if s is None else s, aux_t,
        dummy if alpha is None else alpha, dummy if col1 is None else col1,
        dummy if col2 is None else col2,
        m, n, k1, k2, policy.row_bucket(m), policy.row_bucket(k1), chunk,
        *a1.stride(), *b1.stride(), *a2.stride(), *b2.stride(), *c_view.stride(),
        c1.stride(0) if k_chunk else 0, *aux_t.stride()[-2:],
        EPI=epi, DUAL=dual, HAS_PAIR2=pair2 is not None, HAS_VEC=vec is not None,
        **activation_constexprs(activation), ACC=acc_dtype(a1.dtype),
        PREC=dot_precision(a1.dtype), **options)


def weight_grad(out, pair1, pair2=None, vec=None):
    """out = A1·B1 [+ A2·B2] [+ 1 vecᵀ] for a weight gradient, whose reduction extent K is the
    batch: split-K when the output has few tiles (policy.gemm_k_chunk: a function of the shape,
    not of the GPU), the partial products summed by the host in a fixed order."""
    a1, b1 = pair1
    m, k = a1.shape
    n = b1.shape[1]
    cfg = None if AUTOTUNE else config(a1, m, n, k, "k")
    chunk = None if AUTOTUNE else policy.gemm_k_chunk(
        triton.cdiv(m, cfg["BLOCK_M"]) * triton.cdiv(n, cfg["BLOCK_N"]), k, cfg["BLOCK_K"],
        arch(a1.device))
    if chunk is None:
        gemm(out, pair1, pair2, vec=vec, rows_in="k", cfg=cfg)
        return
    part = out.new_empty((triton.cdiv(k, chunk), m, n), dtype=acc_torch_dtype(out.dtype))
    gemm(part, pair1, pair2, rows_in="k", cfg=cfg, k_chunk=chunk)
    total = part.sum(0)
    if vec is not None:
        total += vec
    out.copy_(total)


def _col_tiles(m: int, cfg: policy.Config) -> int:
    """Rows of the per-M-tile column-sum buffers: one per M tile of `cfg` (autotuning: of the
    smallest candidate BLOCK_M, the autotuner zeroing what a larger tile leaves unwritten)."""
    block_m = (min(c["BLOCK_M"] for c in policy.candidates(policy.GEMM)) if AUTOTUNE
               else cfg["BLOCK_M"])
    return triton.cdiv(max(m, 1), block_m)


def mlp_fwd(x, w1, b1, w2, b2, alpha, activation: str, normalize: bool, eps: float):
    """Wide MLP forward: (y, z, ĝ, r) (a = φ(z) is a temporary: the backward rebuilds it). Three
    launches + the row pass: GEMM1 (z, a, d) → dual GEMM (F, g) → Σg² and mix."""
    n, dim = x.shape
    hidden = w1.shape[0]
    z = x.new_empty((n, hidden))
    a, d = torch.empty_like(z), torch.empty_like(z)
    f, g = x.new_empty((n, dim)), x.new_empty((n, dim))
    if n:
        s = w2.sum(0, dtype=acc_torch_dtype(w2.dtype))
        gemm(z, (x, w1.t()), epi=HIDDEN, c2=a, c3=d, vec=b1, s=s, activation=activation)
        gemm(f, (a, w2.t()), (d, w1), epi=FG, dual=True, c2=g, vec=b2)
    y, g_hat, r = rows.norm_mix(f, x.contiguous(), g, alpha, normalize, eps)
    return y, z, g_hat, r


def mlp_bwd(y_bar, x, w1, b1, w2, alpha, z, g_hat, r, activation: str, normalize: bool,
            detach: bool):
    """(x̄, W̄1, b̄1, W̄2, b̄2, ᾱ): row pass (ᾱ, ḡ) → dual GEMM ā, d̄ with the z̄ epilogue (which
    also rebuilds a = φ(z)) → x̄ GEMM (+ (1−m)ȳ) → stacked W̄1 GEMM → W̄2 GEMM (+ 1 s̄ᵀ)."""
    n, dim = x.shape
    hidden = w1.shape[0]
    acc = acc_torch_dtype(x.dtype)
    y_bar = y_bar.contiguous()
    alpha_sum, g_bar = rows.bwd_rows(y_bar, g_hat, x.contiguous(), r, alpha, normalize, detach)
    z_bar, a = torch.empty_like(z), torch.empty_like(z)
    d = None if detach else torch.empty_like(z)
    zbar_cfg = config(y_bar, n, hidden, dim, dual=True)
    tiles = _col_tiles(n, zbar_cfg)
    col1 = x.new_zeros((tiles, hidden), dtype=acc)
    col2 = None if detach else x.new_zeros((tiles, hidden), dtype=acc)
    x_bar = torch.empty_like(y_bar)
    w1_bar = w1.new_empty(w1.shape)
    w2_bar = w2.new_empty(w2.shape)
    s = w2.sum(0, dtype=acc)
    s_bar = None
    if n:
        gemm(z_bar, (y_bar, w2), None if detach else (g_bar, w1.t()), epi=ZBAR, dual=True,
             c2=d, c3=a, s=s, aux=z, col1=col1, col2=col2, activation=activation, cfg=zbar_cfg)
        gemm(x_bar, (z_bar, w1), epi=XBAR, aux=y_bar, alpha=alpha)
        weight_grad(w1_bar, (z_bar.t(), x), None if detach else (d.t(), g_bar))
        s_bar = None if detach else col2.sum(0)
        weight_grad(w2_bar, (y_bar.t(), a), vec=s_bar)
    else:
        w1_bar.zero_()
        w2_bar.zero_()
    return (x_bar, w1_bar, col1.sum(0).to(w1.dtype), w2_bar,
            y_bar.sum(0, dtype=acc).to(w2.dtype), alpha_grad(alpha, alpha_sum))
