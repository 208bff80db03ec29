// The fused stages of stages.h on CPU (CpuStages): each fills its parameter struct
// (stage_params.h) and spreads its row loops (stages_cpu_loops.h; for float32 the widest ISA this
// CPU runs) over the threads in one at::parallel_for pass; registered with the dispatcher as the
// ops' CPU kernels, through the block glue of blocks.h.
// Elementwise math runs in at::opmath_type; every reduction (row norms, dots, ᾱ, column sums over
// up to N rows) accumulates in double, so float32 results stay within ~1e-7 of a float64 sum.
#include "stages.h"

#include "blocks.h"
#include "stages_cpu_kernels.h"

#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/record_function.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

// The loops at baseline x86-64 (every dtype; float32 too where the CPU has no wider table).
#define GRADRES_CPU_ISA base_loops
#include "stages_cpu_loops.h"
#undef GRADRES_CPU_ISA

namespace gradres {
namespace {

namespace base_loops = cpu::base_loops;

using cpu::row_grain;

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
  // `width`: partials per chunk (1 for a scalar sum, the column count for column sums);
  // `max_count`: at most this many chunks.
  RowChunks(int64_t rows, int64_t cols, int64_t width, int64_t max_count = kMaxChunks)
      : rows(rows) {
    const int64_t by_work = (rows + row_grain(cols) - 1) / row_grain(cols);
    count = std::max<int64_t>(1, std::min({by_work, max_count,
                                           kMaxPartials / std::max<int64_t>(width, 1)}));
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


// The float32 loops for this CPU: the widest ISA it runs, or GRADRES_CPU_ISA=base|avx2|avx512.
const cpu::FloatKernels& float_kernels() {
  static const cpu::FloatKernels* chosen = [] {
    const cpu::FloatKernels* base = base_loops::float_kernels_here("base");
    const cpu::FloatKernels* avx2 = nullptr;
    const cpu::FloatKernels* avx512 = nullptr;
#if defined(__x86_64__) && defined(__GNUC__)
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
      avx2 = cpu::avx2::float_kernels();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
        __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl"))
      avx512 = cpu::avx512::float_kernels();
#endif
    const char* want = std::getenv("GRADRES_CPU_ISA");
    if (want && *want) {
      const std::string w(want);
      const cpu::FloatKernels* k = w == "base" ? base : w == "avx2" ? avx2 : w == "avx512" ? avx512
                                                                                         : nullptr;
      TORCH_CHECK(w == "base" || w == "avx2" || w == "avx512",
                  "GRADRES_CPU_ISA: expected base, avx2 or avx512, got '", w, "'");
      TORCH_CHECK(k != nullptr, "GRADRES_CPU_ISA=", w,
                  ": this CPU or this build has no ", w, " kernels");
      return k;
    }
    return avx512 ? avx512 : avx2 ? avx2 : base;
  }();
  return *chosen;
}

// The loops for scalar_t: float32 through the ISA table, other dtypes at baseline.
template <typename scalar_t, Act A>
void run_act_fwd(const ActFwdParams& p, int64_t b, int64_t e) {
  if constexpr (std::is_same_v<scalar_t, float>)
    float_kernels().act_fwd[static_cast<int>(A)](p, b, e);
  else
    base_loops::act_fwd_rows<scalar_t, A>(p, b, e);
}
template <typename scalar_t>
void run_mix_fwd(const MixFwdParams& p, int64_t b, int64_t e) {
  if constexpr (std::is_same_v<scalar_t, float>)
    float_kernels().mix_fwd(p, b, e);
  else
    base_loops::mix_fwd_rows<scalar_t>(p, b, e);
}
template <typename scalar_t>
double run_mix_bwd(const MixBwdParams& p, int64_t b, int64_t e) {
  if constexpr (std::is_same_v<scalar_t, float>)
    return float_kernels().mix_bwd(p, b, e);
  else
    return base_loops::mix_bwd_rows<scalar_t>(p, b, e);
}
template <typename scalar_t, Act A>
void run_act_bwd(const ActBwdParams& p, int64_t rb, int64_t re, int64_t cb, int64_t ce,
                 double* sums) {
  if constexpr (std::is_same_v<scalar_t, float>)
    float_kernels().act_bwd[static_cast<int>(A)](p, rb, re, cb, ce, sums);
  else
    base_loops::act_bwd_tile<scalar_t, A>(p, rb, re, cb, ce, sums);
}

template <typename scalar_t, Act A>
void act_fwd_cpu(const Tensor& z, const Tensor& s, Tensor& a, Tensor& d) {
  const int64_t rows = z.size(0), P = z.size(1);
  const ActFwdParams p{z.data_ptr(), s.data_ptr(), a.data_ptr(), d.data_ptr(), rows, P, A};
  at::parallel_for(0, rows, row_grain(P),
                   [&](int64_t b, int64_t e) { run_act_fwd<scalar_t, A>(p, b, e); });
}

template <typename scalar_t>
void mix_fwd_cpu(Tensor& f, Tensor& g, const Tensor& x, const Tensor& alpha, bool normalize,
                 double eps, Tensor& r) {
  const int64_t rows = f.size(0), Q = f.size(1);
  const MixFwdParams p{f.data_ptr(), g.data_ptr(), x.data_ptr(), alpha.data_ptr(),
                       normalize ? r.data_ptr() : nullptr, rows, Q, eps, normalize};
  at::parallel_for(0, rows, row_grain(Q),
                   [&](int64_t b, int64_t e) { run_mix_fwd<scalar_t>(p, b, e); });
}

template <typename scalar_t>
void mix_bwd_cpu(const Tensor& y_bar, const Tensor& g_hat, const Tensor& x, const Tensor& r,
                 const Tensor& alpha, bool normalize, bool detach, Tensor& g_bar,
                 Tensor& alpha_bar, Tensor& x_bar, bool set_x_bar) {
  const int64_t rows = y_bar.size(0), Q = y_bar.size(1);
  const MixBwdParams p{y_bar.data_ptr(), g_hat.data_ptr(), x.data_ptr(),
                       (normalize && !detach) ? r.data_ptr() : nullptr, alpha.data_ptr(),
                       detach ? nullptr : g_bar.data_ptr(), alpha_bar.data_ptr(),
                       data_or_null(x_bar), rows, Q, normalize, detach, set_x_bar};
  const double m = cpu::mix_weight<scalar_t>(p.alpha);
  const RowChunks chunks(rows, Q, 1);
  std::vector<double> chunk_sum(static_cast<size_t>(chunks.count), 0.0);  // Σ ȳ(ĝ − x) per chunk
  chunks.for_each([&](int64_t c, int64_t b, int64_t e) {
    chunk_sum[c] = run_mix_bwd<scalar_t>(p, b, e);
  });
  double total = 0;
  for (const double part : chunk_sum) total += part;
  *static_cast<scalar_t*>(p.alpha_bar) = scalar_t(m * (1.0 - m) * total);
}

template <typename scalar_t, Act A>
void act_bwd_cpu(const Tensor& z, const Tensor& a_bar, const Tensor& d_bar, const Tensor& s,
                 bool detach, Tensor& z_bar, Tensor& d, Tensor& a, Tensor& zbar_colsum,
                 Tensor& s_bar) {
  const int64_t rows = z.size(0), P = z.size(1);
  const ActBwdParams p{z.data_ptr(), a_bar.data_ptr(), detach ? nullptr : d_bar.data_ptr(),
                       detach ? nullptr : s.data_ptr(), z_bar.data_ptr(), detach ? nullptr : d.data_ptr(),
                       data_or_null(a), zbar_colsum.data_ptr(), detach ? nullptr : s_bar.data_ptr(),
                       rows, P, A, detach};
  // Column sums, in tiles that depend only on the shape (so results are bit-identical for any
  // thread count): column blocks of ≤ kActBwdColBlock columns × row chunks. Wide rows (conv:
  // P = C·H·W) get one row chunk: each tile sums all rows of its columns on the stack and writes
  // them out. Narrow rows (MLP) get row chunks whose double partials are added up in chunk order.
  const int64_t nsum = detach ? 1 : 2;
  const int64_t col_blocks = std::max<int64_t>(
      1, (P + cpu::kActBwdColBlock - 1) / cpu::kActBwdColBlock);
  const int64_t col_width = (P + col_blocks - 1) / col_blocks;
  const RowChunks chunks(rows, P, nsum * P, col_blocks >= 16 ? 1 : kMaxChunks / col_blocks);
  using acc_t = at::opmath_type<scalar_t>;
  scalar_t* zcs = static_cast<scalar_t*>(p.zbar_colsum);
  acc_t* scs = static_cast<acc_t*>(p.s_bar);  // s̄ in the accumulation type, as s
  const auto cols_of = [&](int64_t blk) {
    return std::make_pair(blk * col_width, std::min(P, (blk + 1) * col_width));
  };
  if (chunks.count == 1) {
    at::parallel_for(0, col_blocks, 1, [&](int64_t bb, int64_t be) {
      double sums[2 * cpu::kActBwdColBlock];
      for (int64_t blk = bb; blk < be; ++blk) {
        const auto [cb, ce] = cols_of(blk);
        const int64_t w = ce - cb;
        std::fill(sums, sums + nsum * w, 0.0);
        run_act_bwd<scalar_t, A>(p, 0, rows, cb, ce, sums);
        for (int64_t q = 0; q < w; ++q) {
          zcs[cb + q] = scalar_t(sums[q]);
          if (!detach) scs[cb + q] = acc_t(sums[w + q]);
        }
      }
    });
    return;
  }
  std::vector<double> partial(static_cast<size_t>(chunks.count * nsum * P), 0.0);
  const auto tile_sums = [&](int64_t c, int64_t cb) {  // chunk c's nsum × w doubles of block cb
    return partial.data() + c * nsum * P + nsum * cb;
  };
  at::parallel_for(0, chunks.count * col_blocks, 1, [&](int64_t tb, int64_t te) {
    for (int64_t t = tb; t < te; ++t) {
      const int64_t c = t / col_blocks;
      const auto [cb, ce] = cols_of(t % col_blocks);
      run_act_bwd<scalar_t, A>(p, chunks.begin(c), chunks.end(c), cb, ce, tile_sums(c, cb));
    }
  });
  for (int64_t blk = 0; blk < col_blocks; ++blk) {
    const auto [cb, ce] = cols_of(blk);
    const int64_t w = ce - cb;
    for (int64_t q = 0; q < w; ++q) {
      double zs = 0, ss = 0;
      for (int64_t c = 0; c < chunks.count; ++c) {
        zs += tile_sums(c, cb)[q];
        if (!detach) ss += tile_sums(c, cb)[w + q];
      }
      zcs[cb + q] = scalar_t(zs);
      if (!detach) scs[cb + q] = acc_t(ss);
    }
  }
}

template <typename scalar_t>
void add_skip_grad_cpu(Tensor& out, const Tensor& y_bar, const Tensor& alpha) {
  using acc_t = at::opmath_type<scalar_t>;
  const acc_t k = acc_t(1.0 - cpu::mix_weight<scalar_t>(alpha.data_ptr()));
  scalar_t* op = out.data_ptr<scalar_t>();
  const scalar_t* yb = y_bar.data_ptr<scalar_t>();
  at::parallel_for(0, out.numel(), 32768, [&](int64_t b, int64_t e) {
    if constexpr (std::is_same_v<scalar_t, float>) {
      float_kernels().axpy(op, yb, k, b, e);
    } else {
#pragma omp simd
      for (int64_t i = b; i < e; ++i) op[i] = scalar_t(acc_t(op[i]) + k * acc_t(yb[i]));
    }
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
                        Tensor& g_bar, Tensor& alpha_bar, Tensor& x_bar, bool set_x_bar) {
  RECORD_FUNCTION("gradres::mix_bwd", std::vector<c10::IValue>());
  GRADRES_CPU_FLOATS(y_bar, "gradres mix_bwd", [&] {
    mix_bwd_cpu<scalar_t>(y_bar, g_hat, x, r, alpha, normalize, detach, g_bar, alpha_bar,
                          x_bar, set_x_bar);
  });
}

void CpuStages::act_bwd(const Tensor& z, const Tensor& a_bar, const Tensor& d_bar,
                        const Tensor& s, Act act, bool detach, Tensor& z_bar, Tensor& d,
                        Tensor& a, Tensor& zbar_colsum, Tensor& s_bar) {
  RECORD_FUNCTION("gradres::act_bwd", std::vector<c10::IValue>());
  GRADRES_CPU_FLOATS(z, "gradres act_bwd", [&] {
    GRADRES_DISPATCH_ACT(act, [&] {
      act_bwd_cpu<scalar_t, A>(z, a_bar, d_bar, s, detach, z_bar, d, a, zbar_colsum, s_bar);
    });
  });
}

void CpuStages::add_skip_grad(Tensor& out, const Tensor& y_bar, const Tensor& alpha) {
  RECORD_FUNCTION("gradres::add_skip_grad", std::vector<c10::IValue>());
  GRADRES_CPU_FLOATS(out, "gradres add_skip_grad", [&] {
    add_skip_grad_cpu<scalar_t>(out, y_bar, alpha);
  });
}

Tensor CpuStages::conv_smap(const Tensor& w2, int64_t H, int64_t W, at::MemoryFormat fmt) {
  return blocks::smap_cpu(w2, H, W, fmt);
}

Tensor CpuStages::conv_smap_adjoint(const Tensor& s_bar, int64_t C, int64_t H, int64_t W,
                                    int64_t kh, int64_t kw, at::MemoryFormat fmt) {
  return blocks::smap_adjoint_cpu(s_bar, C, H, W, kh, kw, fmt);
}

}  // namespace gradres

TORCH_LIBRARY_IMPL(gradres_fused, CPU, m) {
  gradres::blocks::register_blocks<gradres::CpuStages>(m);
}
