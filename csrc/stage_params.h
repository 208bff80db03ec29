// The fused stages' parameters: one struct per stage, filled once per call by the device's stage
// (CpuStages in stages_cpu.cpp, CudaStages in cuda/stages_cuda.cpp) and read by its kernels —
// the CPU loops (stages_cpu_loops.h) and the CUDA launchers (cuda/stages.cu). Torch-free and
// nvcc-safe, like flash-attention's Flash_fwd_params or StyleGAN3's bias_act_kernel_params.
//
// All tensors are dense row-major (rows, cols) views in the stage's dtype unless noted; nullptr
// means "absent". r, the S-map s and its adjoint s̄ are in the accumulation type (float32;
// float64 for float64 inputs): docs/DESIGN.md §4's float32 accumulation for half/bfloat16.
// m = sigmoid(alpha[0]) is computed by the kernels from the alpha pointer (host memory on CPU,
// device memory on CUDA: no synchronization).
#pragma once

#include <cstdint>

#include "activations.h"

namespace gradres {

// a = φ(z), d = φ'(z)·s.
struct ActFwdParams {
  const void* z;      // (rows, P)
  const void* s;      // (P,) s = ∂ΣF/∂a, accumulation type
  void* a;            // (rows, P)
  void* d;            // (rows, P)
  int64_t rows, P;
  Act act;
};

// Per row: r = sqrt(Σg² + eps²), g ← g/r (normalize); f ← f + (1−m)x + m·ĝ (= y).
struct MixFwdParams {
  void* f;            // (rows, Q) in: F (with its bias); out: y
  void* g;            // (rows, Q) in: g; out: ĝ
  const void* x;      // (rows, Q)
  const void* alpha;  // (1,)
  void* r;            // (rows,) accumulation type; normalize only
  int64_t rows, Q;
  double eps;
  bool normalize;
};

// ᾱ = m(1−m)·Σ ȳ(ĝ − x); second order: ḡ = (mȳ − ĝ(ĝ·mȳ))/r (or mȳ); x̄ += (1 − m)ȳ when
// x_bar is given (x̄ = (1 − m)ȳ with set_x_bar).
struct MixBwdParams {
  const void* y_bar;  // (rows, Q)
  const void* g_hat;  // (rows, Q)
  const void* x;      // (rows, Q)
  const void* r;      // (rows,) accumulation type; second order with normalize only
  const void* alpha;  // (1,)
  void* g_bar;        // (rows, Q) second order only
  void* alpha_bar;    // (1,)
  void* x_bar;        // (rows, Q) or nullptr
  int64_t rows, Q;
  bool normalize, detach;
  bool set_x_bar;     // write x̄ rather than add to it (CPU only)
};

// z̄ = ā·φ'(z) [+ d̄·s·φ''(z)], d = φ'(z)·s; column sums zbar_colsum = Σ_rows z̄ and
// s_bar = Σ_rows d̄·φ'(z); a = φ(z) recomputed when `a` is given (for the W̄2 GEMM, which runs
// after this stage). d̄, d and s_bar in second order only. `z` is what the forward kept: z, or
// for an activation with ActOps::kSavesOutput (relu) a = φ(z), off which φ' and φ'' read the
// same. On CPU z_bar may be a_bar and d may be d_bar (in place, CpuStages::kActBwdInPlace); on
// CUDA they are distinct buffers.
struct ActBwdParams {
  const void* z;      // (rows, P) z, or a for kSavesOutput
  const void* a_bar;  // (rows, P)
  const void* d_bar;  // (rows, P)
  const void* s;      // (P,) accumulation type
  void* z_bar;        // (rows, P)
  void* d;            // (rows, P)
  void* a;            // (rows, P) a = φ(z), or nullptr (not recomputed)
  void* zbar_colsum;  // (P,)
  void* s_bar;        // (P,) accumulation type
  int64_t rows, P;
  Act act;
  bool detach;
};

// The conv S-map S[c,i,j] = Σ_{u,v} W2.sum(0)[c,u,v]·R[u,i]·Q[v,j] (docs/DESIGN.md §1), written
// in the row order of the block's format: (c, i, j) or, channels_last, (i, j, c).
struct SmapParams {
  const void* w2;     // (O, C, kh, kw) contiguous, the input dtype
  void* s;            // (C·H·W,) accumulation type
  int64_t O, C, kh, kw, H, W;
  bool channels_last;
};

// Its adjoint: t[c,u,v] = Σ_{i,j} S̄[c,i,j]·R[u,i]·Q[v,j] (every W̄2[o] gets t).
struct SmapAdjointParams {
  const void* s_bar;  // (C·H·W,) accumulation type, row order as SmapParams::s
  void* t;            // (C, kh, kw) accumulation type
  int64_t C, kh, kw, H, W;
  bool channels_last;
};

// out += (1 − m)·ȳ over n elements.
struct AddSkipGradParams {
  void* out;
  const void* y_bar;
  const void* alpha;  // (1,)
  int64_t n;
};

}  // namespace gradres
