// The fused stages of stages.h on CPU (CpuStages): one at::parallel_for pass each; registered with
// the dispatcher as the ops' CPU kernels, through the block glue of blocks.h.
// Elementwise math runs in at::opmath_type; every reduction (row norms, dots, ᾱ, column sums over
// up to N rows) accumulates in double, so float32 results stay within ~1e-7 of a float64 sum.
#include "stages.h"

#include "blocks.h"

#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/record_function.h>

#include <algorithm>
#include <cmath>
#include <vector>

namespace gradres {
namespace {

// Rows per task: enough work per chunk to amortize the thread hand-off.
int64_t row_grain(int64_t cols) { return std::max<int64_t>(1, 32768 / std::max<int64_t>(cols, 1)); }

// The reductions over rows (ᾱ, column sums) split the rows into chunks that depend only on the
// shape, never on the thread count, and keep one partial per chunk, added up in chunk order:
// results are bit-identical for any number of threads. (Partials indexed by at::get_thread_num(),
// as at::parallel_reduce does, would also overrun a buffer sized by at::get_num_threads() when the
// OpenMP team running at::parallel_for's region — this library's runtime — is larger than the
// count torch's runtime reports, e.g. with an Intel-OpenMP torch.)
constexpr int64_t kMaxChunks = 64;           // enough tasks for the threads of one machine
constexpr int64_t kMaxPartials = 1 << 22;    // doubles of per-chunk partials (32 MiB) at most

struct RowChunks {
  int64_t rows, count;
  // `width`: partials per chunk (1 for a scalar sum, the column count for column sums).
  RowChunks(int64_t rows, int64_t cols, int64_t width) : rows(rows) {
    const int64_t by_work = (rows + row_grain(cols) - 1) / row_grain(cols);
    count = std::max<int64_t>(
        1, std::min({by_work, kMaxChunks, kMaxPartials / std::max<int64_t>(width, 1)}));
  }
  int64_t begin(int64_t c) const { return rows * c / count; }
  int64_t end(int64_t c) const { return rows * (c + 1) / count; }
  // f(chunk, first_row, end_row) for every chunk, chunks spread over the threads.
  template <typename F>
  void for_each(const F& f) const {
    at::parallel_for(0, count, 1, [&](int64_t b, int64_t e) {
      for (int64_t c = b; c < e; ++c) f(c, begin(c), end(c));
    });
  }
};

template <typename T>
T sigmoid_of(const Tensor& alpha) {
  double a = alpha.item<double>();
  return static_cast<T>(1.0 / (1.0 + std::exp(-a)));
}

template <typename scalar_t, Act A>
void act_fwd_cpu(const Tensor& z, const Tensor& s, Tensor& a, Tensor& d) {
  using Ops = ActOps<A>;
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t rows = z.size(0), P = z.size(1);
  const scalar_t* zp = z.data_ptr<scalar_t>();
  const scalar_t* sp = s.data_ptr<scalar_t>();
  scalar_t* ap = a.data_ptr<scalar_t>();
  scalar_t* dp = d.data_ptr<scalar_t>();
  at::parallel_for(0, rows, row_grain(P), [&](int64_t b, int64_t e) {
    for (int64_t n = b; n < e; ++n) {
      const int64_t o = n * P;
#pragma omp simd
      for (int64_t p = 0; p < P; ++p) {
        const acc_t v = zp[o + p];
        ap[o + p] = scalar_t(Ops::f(v));
        dp[o + p] = scalar_t(Ops::d1(v) * acc_t(sp[p]));
      }
    }
  });
}

template <typename scalar_t>
void mix_fwd_cpu(Tensor& f, Tensor& g, const Tensor& x, const Tensor& alpha, bool normalize,
                 double eps, Tensor& r) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t rows = f.size(0), Q = f.size(1);
  const acc_t m = sigmoid_of<acc_t>(alpha), eps2 = acc_t(eps) * acc_t(eps);
  scalar_t* fp = f.data_ptr<scalar_t>();
  scalar_t* gp = g.data_ptr<scalar_t>();
  const scalar_t* xp = x.data_ptr<scalar_t>();
  acc_t* rp = normalize ? r.data_ptr<acc_t>() : nullptr;
  at::parallel_for(0, rows, row_grain(Q), [&](int64_t b, int64_t e) {
    for (int64_t n = b; n < e; ++n) {
      scalar_t* fr = fp + n * Q;
      scalar_t* gr = gp + n * Q;
      const scalar_t* xr = xp + n * Q;
      acc_t scale = acc_t(1);
      if (normalize) {
        double ss = 0;
#pragma omp simd reduction(+ : ss)
        for (int64_t q = 0; q < Q; ++q) ss += double(gr[q]) * double(gr[q]);
        const acc_t rr = acc_t(std::sqrt(ss + double(eps2)));
        rp[n] = rr;
        scale = acc_t(1) / rr;
      }
#pragma omp simd
      for (int64_t q = 0; q < Q; ++q) {
        const acc_t gh = acc_t(gr[q]) * scale;
        gr[q] = scalar_t(gh);
        fr[q] = scalar_t(acc_t(fr[q]) + (acc_t(1) - m) * acc_t(xr[q]) + m * gh);
      }
    }
  });
}

template <typename scalar_t>
void mix_bwd_cpu(const Tensor& y_bar, const Tensor& g_hat, const Tensor& x, const Tensor& r,
                 const Tensor& alpha, bool normalize, bool detach, Tensor& g_bar,
                 Tensor& x_copy, Tensor& alpha_bar, Tensor& x_bar) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t rows = y_bar.size(0), Q = y_bar.size(1);
  scalar_t* xbp = x_bar.defined() ? x_bar.data_ptr<scalar_t>() : nullptr;
  const acc_t m = sigmoid_of<acc_t>(alpha);
  const scalar_t* yb = y_bar.data_ptr<scalar_t>();
  const scalar_t* gh = g_hat.data_ptr<scalar_t>();
  const scalar_t* xp = x.data_ptr<scalar_t>();
  const acc_t* rp = (normalize && !detach) ? r.data_ptr<acc_t>() : nullptr;
  scalar_t* gb = detach ? nullptr : g_bar.data_ptr<scalar_t>();
  scalar_t* xc = detach ? nullptr : x_copy.data_ptr<scalar_t>();
  const RowChunks chunks(rows, Q, 1);
  std::vector<double> chunk_sum(static_cast<size_t>(chunks.count), 0.0);  // Σ ȳ(ĝ − x) per chunk
  chunks.for_each([&](int64_t c, int64_t b, int64_t e) {
        double part = 0;
        for (int64_t n = b; n < e; ++n) {
          const int64_t o = n * Q;
          double row = 0, dot_d = 0;  // Σ ȳ(ĝ − x) and ĝ·ȳ of this row
          if (xbp) {
            const acc_t k = acc_t(1) - m;
#pragma omp simd reduction(+ : row, dot_d)
            for (int64_t q = 0; q < Q; ++q) {
              const double y = yb[o + q], g = gh[o + q];
              row += y * (g - double(xp[o + q]));
              dot_d += g * y;
              xbp[o + q] = scalar_t(acc_t(xbp[o + q]) + k * acc_t(yb[o + q]));
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
          const acc_t dot = acc_t(dot_d);
          if (detach) continue;
          if (normalize) {
            const acc_t inv_r = acc_t(1) / rp[n];
#pragma omp simd
            for (int64_t q = 0; q < Q; ++q) {
              gb[o + q] = scalar_t(m * (acc_t(yb[o + q]) - acc_t(gh[o + q]) * dot) * inv_r);
              xc[o + q] = xp[o + q];
            }
          } else {
#pragma omp simd
            for (int64_t q = 0; q < Q; ++q) {
              gb[o + q] = scalar_t(m * acc_t(yb[o + q]));
              xc[o + q] = xp[o + q];
            }
          }
        }
        chunk_sum[c] = part;
      });
  double total = 0;
  for (const double part : chunk_sum) total += part;
  alpha_bar.fill_(double(m) * (1.0 - double(m)) * total);
}

template <typename scalar_t, Act A>
void act_bwd_cpu(const Tensor& z, const Tensor& a_bar, const Tensor& d_bar, const Tensor& s,
                 bool detach, Tensor& z_bar, Tensor& d, Tensor& zbar_colsum, Tensor& s_bar) {
  using Ops = ActOps<A>;
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t rows = z.size(0), P = z.size(1);
  const scalar_t* zp = z.data_ptr<scalar_t>();
  const scalar_t* ab = a_bar.data_ptr<scalar_t>();
  const scalar_t* db = detach ? nullptr : d_bar.data_ptr<scalar_t>();
  const scalar_t* sp = s.data_ptr<scalar_t>();
  scalar_t* zb = z_bar.data_ptr<scalar_t>();
  scalar_t* dp = detach ? nullptr : d.data_ptr<scalar_t>();
  // Column sums: rows go in blocks of ≤ row_grain rows, each summed in acc_t (the loop's type, so
  // it vectorizes) and then added into its chunk's double partials; the chunks' partials are
  // added up in chunk order after the pass.
  const int64_t nsum = detach ? 1 : 2;
  const RowChunks chunks(rows, P, nsum * P);
  const int64_t grain = row_grain(P);
  std::vector<double> partial(static_cast<size_t>(chunks.count * nsum * P), 0.0);
  chunks.for_each([&](int64_t c, int64_t chunk_begin, int64_t chunk_end) {
    std::vector<acc_t> block(static_cast<size_t>(nsum * P));
    double* mine = partial.data() + c * nsum * P;
    acc_t* __restrict zc = block.data();
    acc_t* __restrict sc = zc + (detach ? 0 : P);
    const scalar_t* __restrict zr = zp;
    const scalar_t* __restrict abr = ab;
    const scalar_t* __restrict dbr = db;
    const scalar_t* __restrict sr = sp;
    scalar_t* __restrict zbr = zb;
    scalar_t* __restrict dr = dp;
    for (int64_t b = chunk_begin; b < chunk_end; b += grain) {
      std::fill(block.begin(), block.end(), acc_t(0));
      for (int64_t n = b; n < std::min(b + grain, chunk_end); ++n) {
        const int64_t o = n * P;
        if (detach) {
#pragma omp simd
          for (int64_t p = 0; p < P; ++p) {
            const acc_t v = zr[o + p];
            const acc_t zbar = acc_t(abr[o + p]) * Ops::d1(v);
            zbr[o + p] = scalar_t(zbar);
            zc[p] += zbar;
          }
          continue;
        }
#pragma omp simd
        for (int64_t p = 0; p < P; ++p) {
          const acc_t v = zr[o + p];
          const acc_t d1 = Ops::d1(v), dbar = dbr[o + p], sv = sr[p];
          acc_t zbar = acc_t(abr[o + p]) * d1;
          if (!Ops::kD2IsZero) zbar += dbar * sv * Ops::d2(v);
          zbr[o + p] = scalar_t(zbar);
          dr[o + p] = scalar_t(d1 * sv);
          zc[p] += zbar;
          sc[p] += dbar * d1;
        }
      }
      for (int64_t i = 0; i < nsum * P; ++i) mine[i] += double(block[i]);
    }
  });
  scalar_t* zcs = zbar_colsum.data_ptr<scalar_t>();
  scalar_t* scs = detach ? nullptr : s_bar.data_ptr<scalar_t>();
  for (int64_t p = 0; p < P; ++p) {
    double zs = 0, ss = 0;
    for (int64_t c = 0; c < chunks.count; ++c) {
      zs += partial[(c * nsum) * P + p];
      if (!detach) ss += partial[(c * nsum + 1) * P + p];
    }
    zcs[p] = scalar_t(zs);
    if (!detach) scs[p] = scalar_t(ss);
  }
}

template <typename scalar_t>
void add_skip_grad_cpu(Tensor& out, const Tensor& y_bar, const Tensor& alpha) {
  using acc_t = at::opmath_type<scalar_t>;
  const acc_t k = acc_t(1) - sigmoid_of<acc_t>(alpha);
  scalar_t* op = out.data_ptr<scalar_t>();
  const scalar_t* yb = y_bar.data_ptr<scalar_t>();
  at::parallel_for(0, out.numel(), 32768, [&](int64_t b, int64_t e) {
#pragma omp simd
    for (int64_t i = b; i < e; ++i) op[i] = scalar_t(acc_t(op[i]) + k * acc_t(yb[i]));
  });
}

}  // namespace

#define GRADRES_CPU_FLOATS(t, name, ...) \
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, t.scalar_type(), name, __VA_ARGS__)

void CpuStages::act_fwd(const Tensor& z, const Tensor& s, Act act, Tensor& a, Tensor& d) {
  RECORD_FUNCTION("gradres::act_fwd", std::vector<c10::IValue>());
  GRADRES_CPU_FLOATS(z, "gradres act_fwd", [&] {
    GRADRES_DISPATCH_ACT(act, [&] { act_fwd_cpu<scalar_t, A>(z, s, a, d); });
  });
}

void CpuStages::mix_fwd(Tensor& f, Tensor& g, const Tensor& x, const Tensor& alpha,
                        bool normalize, double eps, Tensor& r) {
  RECORD_FUNCTION("gradres::mix_fwd", std::vector<c10::IValue>());
  GRADRES_CPU_FLOATS(f, "gradres mix_fwd", [&] {
    mix_fwd_cpu<scalar_t>(f, g, x, alpha, normalize, eps, r);
  });
}

void CpuStages::mix_bwd(const Tensor& y_bar, const Tensor& g_hat, const Tensor& x,
                        const Tensor& r, const Tensor& alpha, bool normalize, bool detach,
                        Tensor& g_bar, Tensor& x_copy, Tensor& alpha_bar, Tensor& x_bar) {
  RECORD_FUNCTION("gradres::mix_bwd", std::vector<c10::IValue>());
  GRADRES_CPU_FLOATS(y_bar, "gradres mix_bwd", [&] {
    mix_bwd_cpu<scalar_t>(y_bar, g_hat, x, r, alpha, normalize, detach, g_bar, x_copy,
                          alpha_bar, x_bar);
  });
}

void CpuStages::act_bwd(const Tensor& z, const Tensor& a_bar, const Tensor& d_bar,
                        const Tensor& s, Act act, bool detach, Tensor& z_bar, Tensor& d,
                        Tensor& zbar_colsum, Tensor& s_bar) {
  RECORD_FUNCTION("gradres::act_bwd", std::vector<c10::IValue>());
  GRADRES_CPU_FLOATS(z, "gradres act_bwd", [&] {
    GRADRES_DISPATCH_ACT(act, [&] {
      act_bwd_cpu<scalar_t, A>(z, a_bar, d_bar, s, detach, z_bar, d, zbar_colsum, s_bar);
    });
  });
}

void CpuStages::add_skip_grad(Tensor& out, const Tensor& y_bar, const Tensor& alpha) {
  RECORD_FUNCTION("gradres::add_skip_grad", std::vector<c10::IValue>());
  GRADRES_CPU_FLOATS(out, "gradres add_skip_grad", [&] {
    add_skip_grad_cpu<scalar_t>(out, y_bar, alpha);
  });
}

}  // namespace gradres

TORCH_LIBRARY_IMPL(gradres_fused, CPU, m) {
  gradres::blocks::register_blocks<gradres::CpuStages>(m);
}
