// The fused elementwise / reduction stages of the gradient residual block (docs/DESIGN.md §1–§2),
// on 2-D dense views: "rows" are samples (MLP rows, or conv samples flattened), P = hidden width
// (H, or Cm·H·W for conv), Q = block width (D, or C·H·W). Everything between the GEMMs/convs runs
// here in one pass per stage.
//
// Each device implements the same stages as static functions of a struct — CpuStages in
// stages_cpu.cpp (at::parallel_for), CudaStages in cuda/stages_cuda.cpp (around the kernels of
// cuda/stages.cu) — and the block glue of blocks.h is instantiated once per device over them, so
// the dispatcher selects the device.
#pragma once

#include <ATen/ATen.h>

#include "activations.h"

namespace gradres {

using at::Tensor;

// A tensor's data for a stage's parameter struct (stage_params.h): nullptr when undefined.
inline void* data_or_null(const Tensor& t) { return t.defined() ? t.data_ptr() : nullptr; }

// The stage signatures, spelled once for both devices' structs.
#define GRADRES_STAGE_DECLARATIONS                                                                \
  /* a = φ(z), d = φ'(z)·s[p]  (z already holds its bias: the GEMM or convolution adds it)      \
     z, a, d: (rows, P); s: (P,) in the accumulation type */                                                               \
  static void act_fwd(const Tensor& z, const Tensor& s, Act act, Tensor& a, Tensor& d);           \
  /* Per row n: r[n] = sqrt(Σ_q g² + eps²), g ← g/r (when normalize), f ← f + (1−m)·x + m·ĝ     \
     (= y; f holds F with its bias). f, g, x: (rows, Q); r: (rows,) in the accumulation type     \
     (unused when !normalize); m = sigmoid(alpha[0]). */                                          \
  static void mix_fwd(Tensor& f, Tensor& g, const Tensor& x, const Tensor& alpha, bool normalize, \
                      double eps, Tensor& r);                                                     \
  /* alpha_bar = m(1−m)·Σ ȳ(ĝ − x). Second order (!detach) also writes ḡ = (mȳ − ĝ(ĝ·mȳ))/r     \
     (or mȳ) into g_bar. With x_bar defined it also adds (1 − m)·ȳ to x_bar in the same pass,   \
     or with set_x_bar writes it there (so ȳ is read once for both: kSeedsInputGrad). */        \
  static void mix_bwd(const Tensor& y_bar, const Tensor& g_hat, const Tensor& x, const Tensor& r, \
                      const Tensor& alpha, bool normalize, bool detach, Tensor& g_bar,            \
                      Tensor& alpha_bar, Tensor& x_bar, bool set_x_bar);                          \
  /* z̄ = ā·φ'(z) [+ d̄·s·φ''(z)]; d = φ'(z)·s; column sums: zbar_colsum[p] = Σ_n z̄,              \
     s_bar[p] = Σ_n d̄·φ'(z) (s, s_bar in the accumulation type); a = φ(z) when `a` is defined. \
     Second-order outputs (d, s_bar),                                                          \
     d̄ and s inputs only when !detach (detach mode passes an undefined s). `z` is the tensor   \
     the forward kept: z, or a = φ(z) for ActOps<act>::kSavesOutput (then `a` is undefined). */ \
  static void act_bwd(const Tensor& z, const Tensor& a_bar, const Tensor& d_bar, const Tensor& s, \
                      Act act, bool detach, Tensor& z_bar, Tensor& d, Tensor& a,                  \
                      Tensor& zbar_colsum, Tensor& s_bar);                                        \
  /* out += (1 − m)·ȳ  (x̄'s identity-path term), m = sigmoid(alpha[0]). */                        \
  static void add_skip_grad(Tensor& out, const Tensor& y_bar, const Tensor& alpha);               \
  /* The conv S-map of w2 (O, C, kh, kw) for H×W maps, (C·H·W,) in the row order of `fmt`, in   \
     the accumulation type (docs/DESIGN.md §1; blocks.h Conv::smap). */                           \
  static Tensor conv_smap(const Tensor& w2, int64_t H, int64_t W, at::MemoryFormat fmt);          \
  /* Its adjoint: (C, kh, kw) in s_bar's dtype (the accumulation type), s_bar in the row order   \
     of `fmt`. */                                                                                 \
  static Tensor conv_smap_adjoint(const Tensor& s_bar, int64_t C, int64_t H, int64_t W,           \
                                  int64_t kh, int64_t kw, at::MemoryFormat fmt);

// The GEMMs and convolutions add their own biases on both devices, so the stages never do:
// cuBLASLt adds it in the GEMM's epilogue, and on CPU ATen's addmm, which copies the broadcast
// bias into the output and runs MKL's sgemm with beta = 1, took less than a beta = 0 GEMM (see
// mlp_gemm in blocks.h) plus act_fwd adding the bias and writing z back.
// kSeedsInputGrad: whether the MLP's backward has mix_bwd write x̄ = (1 − m)ȳ first (in the pass
// that reads ȳ for ᾱ) and the x̄ GEMM accumulate into it (beta = 1). On CPU, yes: it saves the
// second order's add_skip_grad pass and, in both modes, MKL's zeroing of the GEMM output. On CUDA,
// no: its mix_bwd only adds (the GEMM writes x̄, then the detach-mode pass adds to it).
// kActBwdInPlace: whether act_bwd may write z̄ over ā and d over d̄ (each is read once, by
// act_bwd, at the index it writes). On CPU, yes: the backward then allocates one (detach) or two
// (second order) hidden-sized buffers fewer, which with glibc's malloc are fresh pages to fault
// in on every call, and writes lines it has just read. On CUDA, no: its kernel reads ā and d̄
// through const __restrict__ pointers, which allow non-coherent loads.
struct CpuStages {
  static constexpr bool kSeedsInputGrad = true;
  static constexpr bool kActBwdInPlace = true;
  GRADRES_STAGE_DECLARATIONS
};

#ifdef WITH_CUDA
struct CudaStages {
  static constexpr bool kSeedsInputGrad = false;
  static constexpr bool kActBwdInPlace = false;
  GRADRES_STAGE_DECLARATIONS
};
#endif

}  // namespace gradres
