// The block families' glue around the fused stages (the C++ twin of gradres_fused/blocks.py):
// argument checks, the forward and backward of docs/DESIGN.md §1–§2 written once over a family
// (MLP: GEMMs, Conv: convolutions, both through ATen) and once over a device's stages. Each
// device's stage file registers its kernels with the dispatcher through register_blocks:
// stages_cpu.cpp for CPU, cuda/stages_cuda.cpp for CUDA. The op schemas are in ops.cpp.
#pragma once

#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/record_function.h>
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "stages.h"

namespace gradres {
namespace blocks {


using Tensor5 = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor>;
using Tensor6 = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor>;

inline Act parse_act(c10::string_view name) {
  for (int i = 0; i < kNumActs; ++i)
    if (name == kActNames[i]) return static_cast<Act>(i);
  TORCH_CHECK_VALUE(false, "activation: expected one of relu, gelu, gelu_tanh, silu, tanh, sin; got '",
                    std::string(name), "'");
}

inline void check_same(const Tensor& x, const Tensor& t, const char* name) {
  TORCH_CHECK_VALUE(t.device() == x.device(), name, ": expected a tensor on ", x.device(),
                    " like x, got ", t.device());
  TORCH_CHECK_TYPE(t.scalar_type() == x.scalar_type(), name, ": expected dtype ",
                   x.scalar_type(), " like x, got ", t.scalar_type());
}

inline void check_inputs(const Tensor& x, const Tensor& w1, const c10::optional<Tensor>& b1,
                  const Tensor& w2, const c10::optional<Tensor>& b2, const Tensor& alpha) {
  TORCH_CHECK_TYPE(at::isFloatingType(x.scalar_type()), "x: expected a floating tensor, got ",
                   x.scalar_type());
  check_same(x, w1, "w1");
  check_same(x, w2, "w2");
  if (b1) check_same(x, *b1, "b1");
  if (b2) check_same(x, *b2, "b2");
  check_same(x, alpha, "alpha");
  TORCH_CHECK_VALUE(alpha.numel() == 1, "alpha: expected one element, got ", alpha.sizes());
}

// The dtype of the saved per-sample norms r: the accumulation type (float32, or float64 for
// float64 x), so that float16/bfloat16 inputs do not round r (a 2⁻⁹ relative error in ḡ for
// bfloat16). gradres_fused/cpp.py's fake kernel says the same.
inline at::ScalarType norm_dtype(const Tensor& x) { return at::toOpMathType(x.scalar_type()); }

// The memory format of the ops' per-sample outputs y and x̄ (and of a weight's gradient, applied
// to the weight): channels_last when x is (and is not also contiguous), so a channels_last
// network stays channels_last without copies; contiguous otherwise. The block computes in it too
// (Fam::work_format; z, a, ĝ are kept in it). gradres_fused/cpp.py's fake kernels follow the same
// rules.
inline at::MemoryFormat sample_format(const Tensor& x) {
  return x.dim() == 4 && !x.is_contiguous() && x.is_contiguous(at::MemoryFormat::ChannelsLast)
             ? at::MemoryFormat::ChannelsLast
             : at::MemoryFormat::Contiguous;
}

// `t` dense in `fmt`. A CPU tensor dense in the other of contiguous / channels_last is
// transposed per sample, (C, H·W) <-> (H·W, C), in tiles on every thread: ATen's strided copy
// of a 2×64×32×32 tensor takes ~130-350 µs on the CPUs measured. The blocks only need it for a
// ȳ (or x, or a weight) that comes in another layout than x's.
inline Tensor relayout(const Tensor& t, at::MemoryFormat fmt) {
  if (t.is_contiguous(fmt)) return t;
  const bool to_cl = fmt == at::MemoryFormat::ChannelsLast;
  if (!t.is_cpu() || t.dim() != 4 ||
      !t.is_contiguous(to_cl ? at::MemoryFormat::Contiguous : at::MemoryFormat::ChannelsLast))
    return t.contiguous(fmt);
  RECORD_FUNCTION("gradres::relayout", std::vector<c10::IValue>());
  Tensor out = at::empty_like(t, t.options(), fmt);
  const int64_t N = t.size(0), C = t.size(1), HW = t.size(2) * t.size(3);
  const int64_t A = to_cl ? C : HW, B = to_cl ? HW : C;  // each sample: (A, B) -> (B, A)
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, t.scalar_type(), "relayout", [&] {
    constexpr int64_t kTile = 16;
    const int64_t tiles = (B + kTile - 1) / kTile;
    const scalar_t* src = t.data_ptr<scalar_t>();
    scalar_t* dst = out.data_ptr<scalar_t>();
    // One task per (sample, tile of kTile columns b). Within a tile the loop runs along the
    // side whose stride is the long one (H·W), so that side is read or written contiguously and
    // the other is strided by C only: strides of H·W (often a multiple of 4 KiB) would map a
    // tile's lines onto a few L1 sets.
    at::parallel_for(0, N * tiles, 1, [&](int64_t kb, int64_t ke) {
      for (int64_t k = kb; k < ke; ++k) {
        const int64_t n = k / tiles, b0 = (k % tiles) * kTile, b1 = std::min(B, b0 + kTile);
        const scalar_t* s = src + n * A * B;
        scalar_t* d = dst + n * A * B;
        if (B > A) {  // to channels_last: a row of s is long; read 16 of it at a time
          for (int64_t a = 0; a < A; ++a)
            for (int64_t b = b0; b < b1; ++b) d[b * A + a] = s[a * B + b];
        } else {      // to contiguous: a row of d is long; write 64 of it at a time
          for (int64_t a0 = 0; a0 < A; a0 += 64) {
            const int64_t a1 = std::min(A, a0 + 64);
            for (int64_t b = b0; b < b1; ++b)
              for (int64_t a = a0; a < a1; ++a) d[b * A + a] = s[a * B + b];
          }
        }
      }
    });
  });
  return out;
}

// A (rows, cols) view of a tensor dense in `fmt` whose leading dim is the sample: a row is one
// sample's slab in memory order — (C, H, W) contiguous, (H, W, C) channels_last. The fused
// stages only need every tensor of a pass in the same order. (cols stays right for an empty
// batch, where the column sums must still cover every column.)
inline Tensor rows_view(const Tensor& t, at::MemoryFormat fmt) {
  const int64_t cols = c10::multiply_integers(t.sizes().slice(1));
  if (fmt == at::MemoryFormat::ChannelsLast && !t.is_contiguous()) {
    TORCH_INTERNAL_ASSERT(t.is_contiguous(at::MemoryFormat::ChannelsLast));
    return t.permute({0, 2, 3, 1}).view({t.size(0), cols});
  }
  TORCH_INTERNAL_ASSERT(t.is_contiguous());
  return t.view({t.size(0), cols});
}

// A per-feature vector of `t`'s features in the order of rows_view(t)'s columns, in (C, H, W)
// order.
inline Tensor from_row_order(const Tensor& v, const Tensor& t, at::MemoryFormat fmt) {
  if (fmt != at::MemoryFormat::ChannelsLast) return v;
  return v.view({t.size(2), t.size(3), t.size(1)}).permute({2, 0, 1}).contiguous().view({-1});
}

// The hidden-sized tensor the forward keeps for the backward: a = φ(z) for an activation with
// ActOps::kSavesOutput (relu), z for every other; the other slot of the ops' (z, a) pair holds a
// one-element placeholder (a zero-size tensor's null data pointer would read as an alias of
// every other empty output). Plain autograd keeps a for relu too, and z and a for the others.
inline Tensor saved_placeholder(const Tensor& like) { return at::zeros({1}, like.options()); }

// The backward ops read ȳ, the kept z (or a), ĝ, r by raw pointer: check what the forward would
// have produced. The slot the activation does not keep is not read (any tensor of x's device and
// dtype: the forward's placeholder, or the full tensor).
inline void check_bwd_inputs(const Tensor& y_bar, const Tensor& x, const Tensor& w1,
                             const Tensor& w2, const Tensor& alpha, const Tensor& z,
                             const Tensor& a, const Tensor& g_hat, const Tensor& r,
                             bool normalize, Act act) {
  check_inputs(x, w1, c10::nullopt, w2, c10::nullopt, alpha);
  for (const auto& [t, name] : {std::pair<const Tensor&, const char*>{y_bar, "y_bar"},
                                {z, "z"}, {a, "a"}, {g_hat, "g_hat"}})
    check_same(x, t, name);
  TORCH_CHECK_VALUE(r.device() == x.device(), "r: expected a tensor on ", x.device(),
                    " like x, got ", r.device());
  TORCH_CHECK_TYPE(r.scalar_type() == norm_dtype(x), "r: expected dtype ", norm_dtype(x),
                   " (the forward's saved norms for x of dtype ", x.scalar_type(), "), got ",
                   r.scalar_type());
  TORCH_CHECK_VALUE(y_bar.sizes() == x.sizes() && g_hat.sizes() == x.sizes(),
                    "y_bar, g_hat: expected the shape of x ", x.sizes(), ", got ", y_bar.sizes(),
                    " and ", g_hat.sizes());
  auto z_sizes = x.sizes().vec();
  z_sizes[1] = w1.size(0);
  const bool keeps_a = act_saves_output(act);
  const Tensor& kept = keeps_a ? a : z;
  TORCH_CHECK_VALUE(kept.sizes() == c10::IntArrayRef(z_sizes), keeps_a ? "a" : "z",
                    ": expected shape ", c10::IntArrayRef(z_sizes),
                    keeps_a ? " (the forward's activation output, which it keeps for "
                            : " (the forward's pre-activation, which it keeps for ",
                    kActNames[static_cast<int>(act)], "), got ", kept.sizes());
  TORCH_CHECK_VALUE(r.dim() == 1 && r.size(0) == (normalize ? x.size(0) : 0) ,
                    "r: expected shape (", normalize ? x.size(0) : 0, ",), got ", r.sizes());
}

inline void check_mlp_shapes(const Tensor& x, const Tensor& w1, const Tensor& w2) {
  TORCH_CHECK_VALUE(x.dim() == 2 && w1.dim() == 2 && w2.dim() == 2 && w1.size(1) == x.size(1) &&
                        w2.size(0) == x.size(1) && w2.size(1) == w1.size(0),
                    "mlp: expected x (N, D), w1 (H, D), w2 (D, H); got ", x.sizes(), ", ",
                    w1.sizes(), ", ", w2.sizes());
}

// The backward's per-sample tensor arguments, checked and dense in `fmt`; r contiguous. `kept`:
// the forward's kept hidden-sized tensor (z, or a for kSavesOutput).
struct BwdInputs {
  Tensor y_bar, x, kept, g_hat, r;
};

inline BwdInputs prepare_bwd(const Tensor& y_bar, const Tensor& x, const Tensor& w1,
                             const Tensor& w2, const Tensor& alpha, const Tensor& z,
                             const Tensor& a, const Tensor& g_hat, const Tensor& r,
                             bool normalize, Act act, at::MemoryFormat fmt) {
  check_bwd_inputs(y_bar, x, w1, w2, alpha, z, a, g_hat, r, normalize, act);
  return {relayout(y_bar, fmt), relayout(x, fmt), (act_saves_output(act) ? a : z).contiguous(fmt),
          g_hat.contiguous(fmt), r.contiguous()};
}

inline Tensor empty_r(const Tensor& x, bool normalize) {
  return at::empty({normalize ? x.size(0) : 0}, x.options().dtype(norm_dtype(x)));
}

// ---------------------------------------------------------------------------------------------
// The two block families as sets of linear maps (the C++ twin of gradres_fused/blocks.py): the
// forward and backward below are written once over a family. Every tensor a fused stage reads is
// viewed as (samples, features) with rows_view, which leaves the MLP's 2-D tensors as they are.
// lin and adjoint return per-sample tensors dense in the block's memory format `fmt`.

// t·m (+ bias, broadcast over rows): the MLP's GEMMs. On CPU a beta = 1 GEMM into a bias-filled
// or zero-filled output: MKL's sgemm with beta = 0 first zeroes C in a pass of its own
// (mkl_blas_def_sgemm_mscale), and a 65536×64·64×64 at::mm took 5.3 ms on 2 AVX-512 EPYC cores
// against 4.8 ms for at::zeros' parallel fill plus the beta = 1 GEMM (4.9 ms for addmm with a
// bias, which copies the bias in first). The result is the same sum: 0 + t·m.
inline Tensor mlp_gemm(const Tensor& t, const Tensor& m, const c10::optional<Tensor>& b) {
  if (b) return at::addmm(*b, t, m);
  if (!t.is_cpu()) return at::mm(t, m);
  return at::zeros({t.size(0), m.size(1)}, t.options()).addmm_(t, m);
}

// MLP: x (N, D), w1 (H, D), w2 (D, H) in the nn.Linear convention; s = W2ᵀ1.
struct MLP {
  // lin_grads_into can accumulate t̄ into a tensor that holds x̄'s skip term already.
  static constexpr bool kAccumulatesInputGrad = true;
  static void check(const Tensor& x, const Tensor& w1, const Tensor& w2) {
    check_mlp_shapes(x, w1, w2);
  }
  static at::MemoryFormat work_format(const Tensor& /*x*/) { return at::MemoryFormat::Contiguous; }
  static Tensor weight(const Tensor& w, at::MemoryFormat /*fmt*/) { return w.contiguous(); }
  static Tensor lin(const Tensor& t, const Tensor& w, const c10::optional<Tensor>& b,
                    at::MemoryFormat /*fmt: always contiguous*/) {
    return mlp_gemm(t, w.t(), b);
  }
  static Tensor adjoint(const Tensor& t, const Tensor& w, at::MemoryFormat /*fmt*/) {
    return mlp_gemm(t, w, c10::nullopt);
  }
  static void add_weight_grad(Tensor& acc, const Tensor& inp, const Tensor& grad_out,
                              const Tensor& /*w*/) {
    acc.addmm_(grad_out.t(), inp);
  }
  // (t̄, W̄) of u = t Wᵀ given ū: the input's and the weight's gradients.
  static std::tuple<Tensor, Tensor> lin_grads(const Tensor& u_bar, const Tensor& t,
                                              const Tensor& w, at::MemoryFormat /*fmt*/) {
    return {mlp_gemm(u_bar, w, c10::nullopt), at::mm(u_bar.t(), t)};
  }
  // t̄_acc += ū W (one beta = 1 GEMM); returns W̄.
  static Tensor lin_grads_into(Tensor& t_bar_acc, const Tensor& u_bar, const Tensor& t,
                               const Tensor& w) {
    t_bar_acc.addmm_(u_bar, w);
    return at::mm(u_bar.t(), t);
  }
  // ā of F = a W2ᵀ + b2 given ȳ (`like`: a tensor of a's shape; the GEMM does not read it).
  static Tensor input_grad(const Tensor& y_bar, const Tensor& w2, const Tensor& /*like*/,
                           at::MemoryFormat /*fmt*/) {
    return mlp_gemm(y_bar, w2, c10::nullopt);
  }
  // (W̄2, b̄2) of F = a W2ᵀ + b2 given ȳ.
  static std::tuple<Tensor, Tensor> weight_bias_grads(const Tensor& y_bar, const Tensor& a,
                                                      const Tensor& /*w2*/) {
    return {at::mm(y_bar.t(), a), y_bar.sum(0)};
  }
  // s = W2ᵀ1 summed and kept in the accumulation type (float32 for half/bfloat16 weights).
  template <typename Stages>
  static Tensor smap(const Tensor& w2, const Tensor& /*z*/, at::MemoryFormat /*fmt*/) {
    return w2.sum(0, /*keepdim=*/false, at::toOpMathType(w2.scalar_type()));
  }
  template <typename Stages>
  static void add_smap_adjoint(Tensor& w2_bar, const Tensor& s_bar, const Tensor& /*z*/,
                               at::MemoryFormat /*fmt*/) {
    w2_bar.add_(s_bar.unsqueeze(0));  // every row of W2 gets s̄
  }
  static Tensor bias_grad(const Tensor& zbar_colsum, const Tensor& /*z*/,
                          at::MemoryFormat /*fmt*/) {
    return zbar_colsum;
  }
};

// Conv: x (N, C, H, W), w1 (Cm, C, k1h, k1w), w2 (C, Cm, k2h, k2w), odd kernels, 'same' padding.
inline std::vector<int64_t> same_pad(const Tensor& w) { return {w.size(2) / 2, w.size(3) / 2}; }

// The convolution, dense in `fmt` (a no-op when ATen's kernel already returns that layout).
inline Tensor conv(const Tensor& t, const Tensor& w, const c10::optional<Tensor>& b,
                   bool transposed, at::MemoryFormat fmt) {
  return at::convolution(t, w, b, {1, 1}, same_pad(w), {1, 1}, transposed, {0, 0}, 1)
      .contiguous(fmt);
}

// convolution_backward of conv(t, w) ('same' padding, stride 1) for the outputs in `mask`:
// (t̄, W̄, b̄).
inline std::tuple<Tensor, Tensor, Tensor> conv_grads(const Tensor& u_bar, const Tensor& t,
                                                     const Tensor& w, std::array<bool, 3> mask) {
  const std::vector<int64_t> bias_sizes = {w.size(0)};
  return at::convolution_backward(u_bar, t, w, bias_sizes, {1, 1}, same_pad(w), {1, 1}, false,
                                  {0, 0}, 1, mask);
}

// Offsets of a per-feature (C, H, W) vector in the row order of `fmt` (rows_view's columns):
// (C, H, W) contiguous, (H, W, C) channels_last.
struct FeatureIndex {
  int64_t C, H, W;
  bool channels_last;
  int64_t operator()(int64_t c, int64_t i, int64_t j) const {
    return channels_last ? (i * W + j) * C + c : (c * H + i) * W + j;
  }
  // f(c, i, j, offset) for every feature; per (c, i) the positions j come in ascending order in
  // both formats, so sums built this way (one accumulator per c or per (c, i)) have the same bits
  // in either. channels_last: memory order. Contiguous: eight channels' planes side by side, so
  // that eight accumulators advance at once (one channel at a time would be latency-bound:
  // ~0.1 ms for a 64×32×32 map).
  template <typename F>
  void for_each(const F& f) const {
    if (channels_last) {
      for (int64_t i = 0, q = 0; i < H; ++i)
        for (int64_t j = 0; j < W; ++j)
          for (int64_t c = 0; c < C; ++c, ++q) f(c, i, j, q);
      return;
    }
    constexpr int64_t kLanes = 8;
    for (int64_t c0 = 0; c0 < C; c0 += kLanes) {
      const int64_t c1 = std::min(C, c0 + kLanes);
      for (int64_t i = 0; i < H; ++i)
        for (int64_t j = 0; j < W; ++j)
          for (int64_t c = c0; c < c1; ++c) f(c, i, j, (c * H + i) * W + j);
    }
  }
};

// taps t of a k-wide 'same' kernel that reach output position p of n: t ∈ [p + k/2 − n + 1,
// p + k/2] ∩ [0, k); positions p a tap t reaches: p ∈ [t − k/2, t − k/2 + n − 1] ∩ [0, n).
inline int64_t first_tap(int64_t p, int64_t k, int64_t n) {
  return std::max<int64_t>(0, p + k / 2 - n + 1);
}
inline int64_t last_tap(int64_t p, int64_t k) { return std::min<int64_t>(k - 1, p + k / 2); }

// S[c, i, j] = Σ_{u,v} W2.sum(0)[c, u, v]·R[u, i]·Q[v, j] on CPU by its two separable sums over
// the taps that reach (i, j), written straight in the row order of `fmt` (no permuted copy of a
// channels_last block's map), in the accumulation type (float32 for half/bfloat16 weights).
inline Tensor smap_cpu(const Tensor& w2, int64_t H, int64_t W, at::MemoryFormat fmt) {
  RECORD_FUNCTION("gradres::smap", std::vector<c10::IValue>());
  const int64_t O = w2.size(0), C = w2.size(1), kh = w2.size(2), kw = w2.size(3);
  const FeatureIndex at_{C, H, W, fmt == at::MemoryFormat::ChannelsLast};
  Tensor out = at::empty({C * H * W}, w2.options().dtype(at::toOpMathType(w2.scalar_type())));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, w2.scalar_type(), "smap_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    // ws = W2.sum(0): (C, kh, kw), summed over the output channels in the accumulation type,
    // read through w2's strides (a channels_last kernel needs no copy).
    std::vector<acc_t> ws(static_cast<size_t>(C * kh * kw), acc_t(0));
    const scalar_t* w2p = w2.data_ptr<scalar_t>();
    const auto st = w2.strides();
    // Contiguous and channels_last kernels hold one run of C·kh·kw per o ((c, u, v) and
    // (u, v, c) order): a loop that vectorizes sums them, the same sums either way.
    const int64_t K = C * kh * kw;
    const auto sum_runs = [&](acc_t* __restrict dst) {
      for (int64_t o = 0; o < O; ++o) {
        const scalar_t* __restrict src = w2p + o * K;
        for (int64_t i = 0; i < K; ++i) dst[i] += acc_t(src[i]);
      }
    };
    if (w2.is_contiguous()) {
      sum_runs(ws.data());
    } else if (w2.is_contiguous(at::MemoryFormat::ChannelsLast)) {
      std::vector<acc_t> wcl(static_cast<size_t>(K), acc_t(0));
      sum_runs(wcl.data());
      for (int64_t u = 0; u < kh; ++u)
        for (int64_t v = 0; v < kw; ++v)
          for (int64_t c = 0; c < C; ++c) ws[(c * kh + u) * kw + v] = wcl[(u * kw + v) * C + c];
    } else {
      for (int64_t o = 0; o < O; ++o)
        for (int64_t c = 0; c < C; ++c)
          for (int64_t u = 0; u < kh; ++u)
            for (int64_t v = 0; v < kw; ++v)
              ws[(c * kh + u) * kw + v] +=
                  acc_t(w2p[o * st[0] + c * st[1] + u * st[2] + v * st[3]]);
    }
    // rows[u][j, c] = Σ_v ws[c, u, v]·Q[v, j]; full[j, c] = Σ_u rows[u][j, c] (the value of every
    // row i that all kh taps reach); each a (j, c) slice of the map in the map's own order (`in`),
    // so a run of the map is a run of them: an (H, W, C) row i, or a (C, H, W) row (c, i).
    const FeatureIndex in{C, 1, W, at_.channels_last};
    const int64_t slice = W * C, run = at_.channels_last ? W * C : W;
    std::vector<acc_t> rows(static_cast<size_t>(kh * slice)), full(static_cast<size_t>(slice));
    for (int64_t u = 0; u < kh; ++u)
      for (int64_t j = 0; j < W; ++j)
        for (int64_t c = 0; c < C; ++c) {
          acc_t t = 0;
          for (int64_t v = first_tap(j, kw, W); v <= last_tap(j, kw); ++v)
            t += ws[(c * kh + u) * kw + v];
          rows[u * slice + in(c, 0, j)] = t;
        }
    for (int64_t q = 0; q < slice; ++q) {
      acc_t t = 0;
      for (int64_t u = 0; u < kh; ++u) t += rows[u * slice + q];
      full[q] = t;
    }
    // Run k of the map is row i = k mod H of the slice's part starting at (k / H)·run.
    acc_t* sp = out.data_ptr<acc_t>();
    at::parallel_for(0, C * H * W / std::max<int64_t>(run, 1), 1, [&](int64_t kb, int64_t ke) {
      std::vector<acc_t> partial(static_cast<size_t>(run));  // a run not every tap row reaches
      for (int64_t k = kb; k < ke; ++k) {
        const int64_t i = k % H, off = (k / H) * run;
        const int64_t u0 = first_tap(i, kh, H), u1 = last_tap(i, kh);
        const acc_t* src = full.data() + off;
        if (u0 != 0 || u1 != kh - 1) {
          std::fill(partial.begin(), partial.end(), acc_t(0));
          for (int64_t u = u0; u <= u1; ++u) {
            const acc_t* r = rows.data() + u * slice + off;
            for (int64_t q = 0; q < run; ++q) partial[q] += r[q];
          }
          src = partial.data();
        }
        std::copy(src, src + run, sp + k * run);
      }
    });
  });
  return out;
}

// T[c, u, v] = Σ_{i,j} S̄[c, i, j]·R[u, i]·Q[v, j] on CPU, the adjoint of smap_cpu: per tap (u, v)
// the sum of S̄[c] over the positions the tap reaches — the row sums of the rows it reaches less
// the few columns it does not. s_bar in the row order of `fmt` and the accumulation type; sums in
// double, in one thread (a fixed order: the same bits at every thread count). (C, kh, kw).
inline Tensor smap_adjoint_cpu(const Tensor& s_bar_, int64_t C, int64_t H, int64_t W, int64_t kh,
                               int64_t kw, at::MemoryFormat fmt) {
  RECORD_FUNCTION("gradres::smap_adjoint", std::vector<c10::IValue>());
  const Tensor s_bar = s_bar_.contiguous();
  const FeatureIndex at_{C, H, W, fmt == at::MemoryFormat::ChannelsLast};
  Tensor out = at::empty({C, kh, kw}, s_bar.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, s_bar.scalar_type(), "smap_adjoint",
                                  [&] {
    const scalar_t* sp = s_bar.data_ptr<scalar_t>();
    std::vector<double> row_sums(static_cast<size_t>(H * C), 0.0);  // [i][c] = Σ_j S̄[c, i, j]
    at_.for_each([&](int64_t c, int64_t i, int64_t /*j*/, int64_t q) {
      row_sums[i * C + c] += double(sp[q]);
    });
    std::vector<double> t(static_cast<size_t>(C));
    scalar_t* op = out.data_ptr<scalar_t>();
    for (int64_t u = 0; u < kh; ++u)
      for (int64_t v = 0; v < kw; ++v) {
        std::fill(t.begin(), t.end(), 0.0);
        const int64_t j0 = std::max<int64_t>(0, v - kw / 2), j1 = std::min(W, v - kw / 2 + W);
        for (int64_t i = std::max<int64_t>(0, u - kh / 2); i < std::min(H, u - kh / 2 + H); ++i) {
          for (int64_t c = 0; c < C; ++c) t[c] += row_sums[i * C + c];
          for (int64_t j = 0; j < W; ++j) {
            if (j >= j0 && j < j1) continue;  // reached: in the row sum already
            for (int64_t c = 0; c < C; ++c) t[c] -= double(sp[at_(c, i, j)]);
          }
        }
        for (int64_t c = 0; c < C; ++c) op[(c * kh + u) * kw + v] = scalar_t(t[c]);
      }
  });
  return out;
}

// b̄[c] = Σ_{h,w} v[c, h, w] on CPU: v is a per-feature vector in the row order of `fmt`, summed
// per channel in double in one loop (at::sum's per-call cost dominates small blocks).
inline Tensor channel_sums_cpu(const Tensor& v_, int64_t C, int64_t H, int64_t W,
                               at::MemoryFormat fmt) {
  const Tensor v = v_.contiguous();
  Tensor out = at::empty({C}, v.options());
  const FeatureIndex at_{C, H, W, fmt == at::MemoryFormat::ChannelsLast};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, v.scalar_type(), "channel_sums", [&] {
    const scalar_t* vp = v.data_ptr<scalar_t>();
    scalar_t* op = out.data_ptr<scalar_t>();
    if (!at_.channels_last) {
      // A channel's plane is one contiguous run: channels split over the threads, each summed
      // in (i, j) order with one accumulator, as for_each would (same bits as channels_last).
      const int64_t HW = H * W;
      at::parallel_for(0, C, std::max<int64_t>(1, 16384 / std::max<int64_t>(HW, 1)),
                       [&](int64_t cb, int64_t ce) {
        for (int64_t c = cb; c < ce; ++c) {
          double t = 0;
          for (int64_t q = 0; q < HW; ++q) t += double(vp[c * HW + q]);
          op[c] = scalar_t(t);
        }
      });
      return;
    }
    std::vector<double> t(static_cast<size_t>(C), 0.0);
    at_.for_each([&](int64_t c, int64_t, int64_t, int64_t q) { t[c] += double(vp[q]); });
    for (int64_t c = 0; c < C; ++c) op[c] = scalar_t(t[c]);
  });
  return out;
}

inline void check_conv_shapes(const Tensor& x, const Tensor& w1, const Tensor& w2) {
  TORCH_CHECK_VALUE(x.dim() == 4 && w1.dim() == 4 && w2.dim() == 4 && w1.size(1) == x.size(1) &&
                        w2.size(0) == x.size(1) && w2.size(1) == w1.size(0),
                    "conv: expected x (N, C, H, W), w1 (Cm, C, k, k), w2 (C, Cm, k, k); got ",
                    x.sizes(), ", ", w1.sizes(), ", ", w2.sizes());
  for (const Tensor* w : {&w1, &w2})
    TORCH_CHECK_VALUE(w->size(2) % 2 == 1 && w->size(3) % 2 == 1,
                      "conv: expected odd kernel sizes, got ", w->sizes());
}

struct Conv {
  // convolution_backward writes its input gradient: the skip term is added after it.
  static constexpr bool kAccumulatesInputGrad = false;
  static void check(const Tensor& x, const Tensor& w1, const Tensor& w2) {
    check_conv_shapes(x, w1, w2);
  }
  // The block computes in x's format (sample_format): a contiguous network runs NCHW
  // convolutions, a channels_last one channels_last ones, and neither pays layout copies of its
  // activations. (Computing every CPU block in channels_last, whatever x's format, was tried: on
  // an AVX-512 EPYC its convolutions beat the NCHW ones by more than the four copies of x, y, ȳ
  // and x̄ a contiguous network then pays; on an AVX2 EPYC (Zen 3) the channels_last
  // convolution_backward is slower than NCHW's and the copies ~0.4 ms each, and a 16-block EDSR
  // step took 1.3-1.7× plain instead of 1.16×. The network's own layout is what the user chose
  // for the rest of the model too.)
  static at::MemoryFormat work_format(const Tensor& x) { return sample_format(x); }
  // On CPU the kernels in the block's format (oneDNN's choice for channels_last activations); on
  // CUDA contiguous (cuDNN picks its own).
  static Tensor weight(const Tensor& w, at::MemoryFormat fmt) {
    return w.is_cpu() ? relayout(w, fmt) : w.contiguous();
  }
  static Tensor lin(const Tensor& t, const Tensor& w, const c10::optional<Tensor>& b,
                    at::MemoryFormat fmt) {
    return conv(t, w, b, false, fmt);
  }
  static Tensor adjoint(const Tensor& t, const Tensor& w, at::MemoryFormat fmt) {
    return conv(t, w, c10::nullopt, true, fmt);
  }
  static void add_weight_grad(Tensor& acc, const Tensor& inp, const Tensor& grad_out,
                              const Tensor& w) {
    acc.add_(std::get<1>(conv_grads(grad_out, inp, w, {false, true, false})));
  }
  // (t̄, W̄) of u = conv(t, W) given ū, in one convolution_backward (on CPU cheaper than the two
  // convolutions apart); W̄ in the layout ATen gives it (block_bwd lays it out like the weight).
  static std::tuple<Tensor, Tensor> lin_grads(const Tensor& u_bar, const Tensor& t,
                                              const Tensor& w, at::MemoryFormat fmt) {
    auto g = conv_grads(u_bar, t, w, {true, true, false});
    return {std::get<0>(g).contiguous(fmt), std::get<1>(g)};
  }
  // ā apart from (W̄2, b̄2): the backward recomputes a (act_bwd) after ā and before W̄2. Apart,
  // the two take no longer than one convolution_backward for all three (oneDNN runs them as
  // separate primitives either way; 4×64×48×48, 2 cores). `like` gives a's shape and format only.
  static Tensor input_grad(const Tensor& y_bar, const Tensor& w2, const Tensor& like,
                           at::MemoryFormat fmt) {
    return std::get<0>(conv_grads(y_bar, like, w2, {true, false, false})).contiguous(fmt);
  }
  static std::tuple<Tensor, Tensor> weight_bias_grads(const Tensor& y_bar, const Tensor& a,
                                                      const Tensor& w2) {
    auto g = conv_grads(y_bar, a, w2, {false, true, true});
    return {std::get<1>(g), std::get<2>(g)};
  }
  // S[c,i,j] = Σ_{u,v} W2.sum(0)[c,u,v] R[u,i] Q[v,j]: ∂ΣF/∂a, independent of x; flattened in
  // the row order of fmt, in the accumulation type. One stage per device (CPU: smap_cpu; CUDA:
  // one kernel, W2's channel sums and the border taps together), once per op call at most.
  template <typename Stages>
  static Tensor smap(const Tensor& w2, const Tensor& z, at::MemoryFormat fmt) {
    return Stages::conv_smap(w2, z.size(2), z.size(3), fmt);
  }
  // W̄2[o,c,u,v] += Σ_{i,j} S̄[c,i,j] R[u,i] Q[v,j] for every o; s_bar in the row order of fmt.
  template <typename Stages>
  static void add_smap_adjoint(Tensor& w2_bar, const Tensor& s_bar, const Tensor& z,
                               at::MemoryFormat fmt) {
    w2_bar.add_(Stages::conv_smap_adjoint(s_bar, w2_bar.size(1), z.size(2), z.size(3),
                                          w2_bar.size(2), w2_bar.size(3), fmt)
                    .unsqueeze(0));
  }
  // b̄1 from the column sums of z̄ (row order of fmt).
  static Tensor bias_grad(const Tensor& zbar_colsum, const Tensor& z, at::MemoryFormat fmt) {
    const int64_t C = z.size(1), H = z.size(2), W = z.size(3);
    if (zbar_colsum.is_cpu()) return channel_sums_cpu(zbar_colsum, C, H, W, fmt);
    return from_row_order(zbar_colsum, z, fmt).view({C, -1}).sum(1);
  }
};

// Forward of docs/DESIGN.md §1. Returns y and what the backward needs — ĝ, r and one
// hidden-sized tensor — in the slots (z, a, ĝ, r): a = φ(z) for an activation with kSavesOutput
// (relu; the W̄2 GEMM reads it and φ' reads off it), z for the others (the backward recomputes a
// in its pass over z); the other slot a one-element placeholder (saved_placeholder).
template <typename Fam, typename Stages>
Tensor5 block_fwd(const Tensor& x_, const Tensor& w1_, const c10::optional<Tensor>& b1,
                  const Tensor& w2_, const c10::optional<Tensor>& b2, const Tensor& alpha,
                  c10::string_view activation, bool normalize, double eps, bool /*detach*/) {
  check_inputs(x_, w1_, b1, w2_, b2, alpha);
  Fam::check(x_, w1_, w2_);
  const Act act = parse_act(activation);
  const at::MemoryFormat fmt = Fam::work_format(x_);
  const Tensor x = relayout(x_, fmt), w1 = Fam::weight(w1_, fmt), w2 = Fam::weight(w2_, fmt);
  // The GEMMs / convolutions add the biases (stages.h says why).
  const Tensor z = Fam::lin(x, w1, b1, fmt);
  const Tensor s = Fam::template smap<Stages>(w2_, z, fmt);
  Tensor a = at::empty_like(z, z.options(), fmt), d = at::empty_like(z, z.options(), fmt);
  Tensor av = rows_view(a, fmt), dv = rows_view(d, fmt);
  Stages::act_fwd(rows_view(z, fmt), s, act, av, dv);
  Tensor y = Fam::lin(a, w2, b2, fmt);  // F; becomes y in place
  Tensor g = Fam::adjoint(d, w1, fmt);  // g; becomes ĝ in place
  Tensor r = empty_r(x, normalize);
  Tensor yv = rows_view(y, fmt), gv = rows_view(g, fmt);
  Stages::mix_fwd(yv, gv, rows_view(x, fmt), alpha, normalize, eps, r);
  const bool keeps_a = act_saves_output(act);
  return {relayout(y, sample_format(x_)), keeps_a ? saved_placeholder(x) : z,
          keeps_a ? a : saved_placeholder(x), g, r};
}

// Backward of docs/DESIGN.md §2. Returns (x̄, W̄1, b̄1, W̄2, b̄2, ᾱ); b̄1, b̄2 always computed.
template <typename Fam, typename Stages>
Tensor6 block_bwd(const Tensor& y_bar_, const Tensor& x_, const Tensor& w1_,
                  const c10::optional<Tensor>& /*b1: for autograd only*/, const Tensor& w2_,
                  const Tensor& alpha, const Tensor& z_, const Tensor& a_, const Tensor& g_hat_,
                  const Tensor& r_, c10::string_view activation, bool normalize,
                  double /*eps: for autograd only*/, bool detach) {
  const Act act = parse_act(activation);
  Fam::check(x_, w1_, w2_);
  const at::MemoryFormat fmt = Fam::work_format(x_);
  // z: what the forward kept — z, or a = φ(z) for kSavesOutput (φ', φ'' read the same off it).
  const auto [y_bar, x, z, g_hat, r] =
      prepare_bwd(y_bar_, x_, w1_, w2_, alpha, z_, a_, g_hat_, r_, normalize, act, fmt);
  const bool keeps_a = act_saves_output(act);
  const Tensor w1 = Fam::weight(w1_, fmt), w2 = Fam::weight(w2_, fmt);
  Tensor g_bar = detach ? Tensor() : at::empty_like(x, x.options(), fmt);
  Tensor gbv = detach ? Tensor() : rows_view(g_bar, fmt);
  Tensor alpha_bar = at::empty_like(alpha);
  // Where x̄ is seeded (Stages::kSeedsInputGrad, and a family whose x̄ GEMM can accumulate), the
  // first mix_bwd writes x̄ = (1 − m)ȳ and the x̄ GEMM adds W1ᵀz̄ to it; otherwise the GEMM writes
  // x̄ and the skip term is added after it (detach: by the last mix_bwd, in its pass over ȳ).
  constexpr bool seed_x_bar = Stages::kSeedsInputGrad && Fam::kAccumulatesInputGrad;
  Tensor x_bar = seed_x_bar ? at::empty_like(x, x.options(), fmt) : Tensor();
  Tensor xbv = seed_x_bar ? rows_view(x_bar, fmt) : Tensor();
  if (!detach || seed_x_bar)  // ḡ is needed before the d̄ GEMM; ᾱ comes with it
    Stages::mix_bwd(rows_view(y_bar, fmt), rows_view(g_hat, fmt), rows_view(x, fmt), r, alpha,
                    normalize, detach, gbv, alpha_bar, xbv, seed_x_bar);

  const Tensor a_bar = Fam::input_grad(y_bar, w2, z, fmt);
  const Tensor d_bar = detach ? Tensor() : Fam::lin(g_bar, w1, c10::nullopt, fmt);
  // s only feeds the second-order terms (d, z̄'s φ'' term): detach mode skips the S-map.
  const Tensor s = detach ? Tensor() : Fam::template smap<Stages>(w2_, z, fmt);
  // ā and d̄ are fresh results read only by act_bwd: where the stages allow it, z̄ and d take
  // their buffers (both are dense in fmt, as rows_view checks).
  const auto out_buffer = [&](const Tensor& in) {
    return Stages::kActBwdInPlace ? in : at::empty_like(z, z.options(), fmt);
  };
  Tensor z_bar = out_buffer(a_bar);
  Tensor d = detach ? Tensor() : out_buffer(d_bar);
  Tensor zbv = rows_view(z_bar, fmt);
  Tensor dv = detach ? Tensor() : rows_view(d, fmt);
  Tensor zbar_colsum = at::empty({zbv.size(1)}, z.options());
  Tensor s_bar = detach ? Tensor() : at::empty_like(s);
  // a = φ(z) for the W̄2 GEMM: kept by the forward, or recomputed by act_bwd in its pass over z.
  const Tensor a = keeps_a ? z : at::empty_like(z, z.options(), fmt);
  Tensor av = keeps_a ? Tensor() : rows_view(a, fmt);
  Stages::act_bwd(rows_view(z, fmt), rows_view(a_bar, fmt),
                  detach ? Tensor() : rows_view(d_bar, fmt), s, act, detach, zbv, dv, av,
                  zbar_colsum, s_bar);
  auto [w2_bar, b2_bar] = Fam::weight_bias_grads(y_bar, a, w2);
  if (!detach) Fam::template add_smap_adjoint<Stages>(w2_bar, s_bar, z, fmt);
  // x̄ = W1ᵀz̄ (+ skip) with W̄1 = z̄ᵀx (+ dᵀḡ): two GEMMs/convs into one result rather than one
  // over stacked [x; ḡ], which would copy x and allocate 2N-sample buffers every call.
  Tensor w1_bar;
  if constexpr (seed_x_bar) {
    w1_bar = Fam::lin_grads_into(x_bar, z_bar, x, w1);
  } else {
    std::tie(x_bar, w1_bar) = Fam::lin_grads(z_bar, x, w1, fmt);
  }
  if (!detach) Fam::add_weight_grad(w1_bar, g_bar, d, w1);
  Tensor b1_bar = Fam::bias_grad(zbar_colsum, z, fmt);
  if (!seed_x_bar && detach) {  // ᾱ and x̄ += (1 − m)ȳ in one pass over ȳ
    xbv = rows_view(x_bar, fmt);
    Stages::mix_bwd(rows_view(y_bar, fmt), rows_view(g_hat, fmt), rows_view(x, fmt), r, alpha,
                    normalize, detach, gbv, alpha_bar, xbv, false);
  } else if (!seed_x_bar) {
    Stages::add_skip_grad(x_bar, y_bar, alpha);
  }
  // x̄ like x, W̄ like W (channels_last weights get channels_last gradients, which autograd
  // would otherwise copy into their layout).
  return {relayout(x_bar, sample_format(x_)), w1_bar.contiguous(sample_format(w1_)), b1_bar,
          w2_bar.contiguous(sample_format(w2_)), b2_bar, alpha_bar};
}

// The ops' kernels for one device, whose fused stages are `Stages` (CpuStages, CudaStages).
template <typename Stages>
void register_blocks(torch::Library& m) {
  m.impl("mlp_fwd", &block_fwd<MLP, Stages>);
  m.impl("mlp_bwd", &block_bwd<MLP, Stages>);
  m.impl("conv_fwd", &block_fwd<Conv, Stages>);
  m.impl("conv_bwd", &block_bwd<Conv, Stages>);
}

}  // namespace blocks
}  // namespace gradres
