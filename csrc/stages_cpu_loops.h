// The CPU stages' loops over a range of rows, for one instruction set: included (no include
// guard) by each ISA's translation unit with GRADRES_CPU_ISA naming its namespace, after that unit
// has included stages_cpu_kernels.h and set its target. See stages_cpu_kernels.h.
#ifndef GRADRES_CPU_ISA
#error "define GRADRES_CPU_ISA (the namespace of this ISA's kernels) before including stages_cpu_loops.h"
#endif
namespace gradres {
namespace cpu {
namespace GRADRES_CPU_ISA {

template <typename scalar_t, Act A>
void act_fwd_rows(const ActFwdParams& p, int64_t begin, int64_t end) {
  using Ops = ActOps<A>;
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t P = p.P;
  const scalar_t* __restrict zp = static_cast<const scalar_t*>(p.z);
  const acc_t* __restrict sp = static_cast<const acc_t*>(p.s);
  scalar_t* __restrict ap = static_cast<scalar_t*>(p.a);
  scalar_t* __restrict dp = static_cast<scalar_t*>(p.d);
  for (int64_t n = begin; n < end; ++n) {
    const scalar_t* __restrict zr = zp + n * P;
    scalar_t* __restrict ar = ap + n * P;
    scalar_t* __restrict dr = dp + n * P;
#pragma omp simd
    for (int64_t q = 0; q < P; ++q) {
      const acc_t v = zr[q];
      ar[q] = scalar_t(Ops::f(v));
      dr[q] = scalar_t(Ops::d1(v) * sp[q]);
    }
  }
}

template <typename scalar_t>
void mix_fwd_rows(const MixFwdParams& p, int64_t begin, int64_t end) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t Q = p.Q;
  const acc_t m = acc_t(mix_weight<scalar_t>(p.alpha)), k = acc_t(1) - m;
  const double eps2 = double(acc_t(p.eps) * acc_t(p.eps));
  scalar_t* __restrict fp = static_cast<scalar_t*>(p.f);
  scalar_t* __restrict gp = static_cast<scalar_t*>(p.g);
  const scalar_t* __restrict xp = static_cast<const scalar_t*>(p.x);
  acc_t* __restrict rp = static_cast<acc_t*>(p.r);
  for (int64_t n = begin; n < end; ++n) {
    scalar_t* __restrict fr = fp + n * Q;
    scalar_t* __restrict gr = gp + n * Q;
    const scalar_t* __restrict xr = xp + n * Q;
    acc_t scale = acc_t(1);
    if (p.normalize) {
      double ss = 0;
#pragma omp simd reduction(+ : ss)
      for (int64_t q = 0; q < Q; ++q) ss += double(gr[q]) * double(gr[q]);
      const acc_t rr = acc_t(std::sqrt(ss + eps2));
      rp[n] = rr;
      scale = acc_t(1) / rr;
    }
#pragma omp simd
    for (int64_t q = 0; q < Q; ++q) {
      const acc_t gh = acc_t(gr[q]) * scale;
      gr[q] = scalar_t(gh);
      fr[q] = scalar_t(acc_t(fr[q]) + k * acc_t(xr[q]) + m * gh);
    }
  }
}

// Σ over the rows of ȳ·(ĝ − x), in double; second order also writes ḡ, and x̄ += (1 − m)ȳ when
// x_bar is given (x̄ = (1 − m)ȳ with set_x_bar).
template <typename scalar_t>
double mix_bwd_rows(const MixBwdParams& p, int64_t begin, int64_t end) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t Q = p.Q;
  const acc_t m = acc_t(mix_weight<scalar_t>(p.alpha)), k = acc_t(1) - m;
  const scalar_t* __restrict yb = static_cast<const scalar_t*>(p.y_bar);
  const scalar_t* __restrict gh = static_cast<const scalar_t*>(p.g_hat);
  const scalar_t* __restrict xp = static_cast<const scalar_t*>(p.x);
  const acc_t* __restrict rp = static_cast<const acc_t*>(p.r);
  scalar_t* __restrict gb = static_cast<scalar_t*>(p.g_bar);
  scalar_t* __restrict xb = static_cast<scalar_t*>(p.x_bar);
  double part = 0;
  for (int64_t n = begin; n < end; ++n) {
    const int64_t o = n * Q;
    double row = 0, dot_d = 0;  // Σ ȳ(ĝ − x) and ĝ·ȳ of this row
    if (xb && p.set_x_bar) {
#pragma omp simd reduction(+ : row, dot_d)
      for (int64_t q = 0; q < Q; ++q) {
        const double y = yb[o + q], g = gh[o + q];
        row += y * (g - double(xp[o + q]));
        dot_d += g * y;
        xb[o + q] = scalar_t(k * acc_t(yb[o + q]));
      }
    } else if (xb) {
#pragma omp simd reduction(+ : row, dot_d)
      for (int64_t q = 0; q < Q; ++q) {
        const double y = yb[o + q], g = gh[o + q];
        row += y * (g - double(xp[o + q]));
        dot_d += g * y;
        xb[o + q] = scalar_t(acc_t(xb[o + q]) + k * acc_t(yb[o + q]));
      }
    } else {
#pragma omp simd reduction(+ : row, dot_d)
      for (int64_t q = 0; q < Q; ++q) {
        const double y = yb[o + q], g = gh[o + q];
        row += y * (g - double(xp[o + q]));
        dot_d += g * y;
      }
    }
    part += row;
    if (p.detach) continue;
    if (p.normalize) {
      const acc_t dot = acc_t(dot_d), inv_r = acc_t(1) / rp[n];
#pragma omp simd
      for (int64_t q = 0; q < Q; ++q)
        gb[o + q] = scalar_t(m * (acc_t(yb[o + q]) - acc_t(gh[o + q]) * dot) * inv_r);
    } else {
#pragma omp simd
      for (int64_t q = 0; q < Q; ++q) gb[o + q] = scalar_t(m * acc_t(yb[o + q]));
    }
  }
  return part;
}

// z̄ = ā·φ'(z) [+ d̄·s·φ''(z)], d = φ'(z)·s (and a = φ(z) when p.a is set) over rows
// [row_begin, row_end) × columns [col_begin, col_end) (at most kActBwdColBlock of them); the
// tile's column sums Σz̄ (then Σd̄·φ'(z)) are added into sums[0, w) (then sums[w, 2w)),
// w = col_end − col_begin: row_grain(P) rows at a time summed in acc_t (the loop's type, so it
// vectorizes), then added in double; rows of 32768 columns or more (grain 1) straight in double,
// which gives the same bits without the per-row fill and add-out of a one-row partial (3 passes
// over the tile's sums per row).
template <typename scalar_t, Act A>
void act_bwd_tile(const ActBwdParams& p, int64_t row_begin, int64_t row_end, int64_t col_begin,
                  int64_t col_end, double* sums) {
  using Ops = ActOps<A>;
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t P = p.P, w = col_end - col_begin, nsum = p.detach ? 1 : 2;
  const int64_t grain = row_grain(P);
  const scalar_t* __restrict zp = static_cast<const scalar_t*>(p.z) + col_begin;
  const acc_t* __restrict sp = p.detach ? nullptr : static_cast<const acc_t*>(p.s) + col_begin;
  // z̄ may be ā's buffer and d d̄'s (CpuStages::kActBwdInPlace): those pairs are not __restrict.
  // Each element is read before it is written, at the same index, so the simd loops stay valid.
  const scalar_t* ab = static_cast<const scalar_t*>(p.a_bar) + col_begin;
  const scalar_t* db = p.detach ? nullptr : static_cast<const scalar_t*>(p.d_bar) + col_begin;
  scalar_t* zb = static_cast<scalar_t*>(p.z_bar) + col_begin;
  scalar_t* dp = p.detach ? nullptr : static_cast<scalar_t*>(p.d) + col_begin;
  scalar_t* __restrict ap = p.a ? static_cast<scalar_t*>(p.a) + col_begin : nullptr;
  // One row's z̄ (and d, a), its column sums added into zc (and sc): acc_t partials or doubles.
  // kA: whether the row also writes a = φ(z) (a compile-time branch, so the loops stay simd).
  const auto row = [&](auto kA, int64_t n, auto* __restrict zc, auto* __restrict sc) {
    using sum_t = std::decay_t<decltype(zc[0])>;
    constexpr bool write_a = decltype(kA)::value;
    const int64_t o = n * P;
    if (p.detach) {
#pragma omp simd
      for (int64_t q = 0; q < w; ++q) {
        const acc_t v = zp[o + q];
        const acc_t zbar = acc_t(ab[o + q]) * Ops::d1(v);
        if constexpr (write_a) ap[o + q] = scalar_t(Ops::f(v));
        zb[o + q] = scalar_t(zbar);
        zc[q] += sum_t(zbar);
      }
      return;
    }
#pragma omp simd
    for (int64_t q = 0; q < w; ++q) {
      const acc_t v = zp[o + q];
      const acc_t d1 = Ops::d1(v), dbar = db[o + q], sv = sp[q];
      acc_t zbar = acc_t(ab[o + q]) * d1;
      if (!Ops::kD2IsZero) zbar += dbar * sv * Ops::d2(v);
      if constexpr (write_a) ap[o + q] = scalar_t(Ops::f(v));
      zb[o + q] = scalar_t(zbar);
      dp[o + q] = scalar_t(d1 * sv);
      zc[q] += sum_t(zbar);
      sc[q] += sum_t(dbar * d1);
    }
  };
  // kSavesOutput activations never recompute a (their `z` is a already).
  const auto rows = [&](int64_t b, int64_t e, auto* zc, auto* sc) {
    if (!Ops::kSavesOutput && ap) {
      for (int64_t n = b; n < e; ++n) row(std::true_type{}, n, zc, sc);
    } else {
      for (int64_t n = b; n < e; ++n) row(std::false_type{}, n, zc, sc);
    }
  };
  if (grain == 1) {  // wide rows (conv): straight into the doubles (what 1-row partials give)
    rows(row_begin, row_end, sums, sums + w);
    return;
  }
  acc_t block[2 * kActBwdColBlock];
  for (int64_t b = row_begin; b < row_end; b += grain) {
    std::fill(block, block + nsum * w, acc_t(0));
    rows(b, std::min(b + grain, row_end), block, block + w);
    for (int64_t i = 0; i < nsum * w; ++i) sums[i] += double(block[i]);
  }
}

inline void axpy_range(float* __restrict out, const float* __restrict in, float k, int64_t begin,
                       int64_t end) {
#pragma omp simd
  for (int64_t i = begin; i < end; ++i) out[i] = out[i] + k * in[i];
}

template <Act... As>
constexpr FloatKernels make_float_kernels(const char* isa) {
  return {isa,
          {&act_fwd_rows<float, As>...},
          &mix_fwd_rows<float>,
          &mix_bwd_rows<float>,
          {&act_bwd_tile<float, As>...},
          &axpy_range};
}

// Every activation, in Act's order (the tables are indexed by Act).
inline const FloatKernels* float_kernels_here(const char* isa) {
  static const FloatKernels k = make_float_kernels<Act::Relu, Act::Gelu, Act::GeluTanh,
                                                   Act::Silu, Act::Tanh, Act::Sin>(isa);
  return &k;
}

}  // namespace GRADRES_CPU_ISA
}  // namespace cpu
}  // namespace gradres
