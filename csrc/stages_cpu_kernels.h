// The CPU stages' inner loops, compiled once per instruction set: their parameters and tables.
//
// stages_cpu.cpp owns the stages (tensors, threads, the reductions' chunking); the loops over a
// range of rows (stages_cpu_loops.h) work on raw pointers through the torch-free parameter structs
// below. stages_cpu.cpp compiles them for baseline x86-64 (every dtype); stages_cpu_avx2.cpp and
// stages_cpu_avx512.cpp compile the float32 ones again under `#pragma GCC target`, and
// stages_cpu.cpp picks the widest table the CPU runs (GRADRES_CPU_ISA=base|avx2|avx512 in the
// environment overrides it). The same source in every copy: only the vector width differs, so the
// ISAs agree to rounding.
//
// An ISA unit includes this header — and with it every header its loops use — *before* its
// target pragma, so that no inline function of a shared header is compiled for a wider ISA (the
// linker keeps one copy of each, which could then run on a CPU without that ISA).
#pragma once

#include <ATen/OpMathType.h>

#include <algorithm>
#include <cstdint>

#include <cmath>

#include "activations.h"

namespace gradres {
namespace cpu {

// One pass's operands, filled once per stage call (stages_cpu.cpp); row-major (rows, cols) views.
// Pointers are to the stage's dtype unless noted; nullptr means "absent".
struct ActFwdParams {
  void* z;             // (rows, P) in: z without bias; out: z + bias when bias is given
  const void* bias;    // (P,) or nullptr
  const void* s;       // (P,) s = ∂ΣF/∂a
  void* a;             // (rows, P) φ(z)
  void* d;             // (rows, P) φ'(z)·s
  int64_t P;
};

struct MixFwdParams {
  void* f;             // (rows, Q) in: F (without bias when bias is given); out: y
  const void* bias;    // (Q,) or nullptr
  void* g;             // (rows, Q) in: g; out: ĝ
  const void* x;       // (rows, Q)
  void* r;             // (rows,) in the accumulation type: the row norms (normalize only)
  int64_t Q;
  double m;            // sigmoid(alpha)
  double eps;
  bool normalize;
};

struct MixBwdParams {
  const void* y_bar;   // (rows, Q)
  const void* g_hat;   // (rows, Q)
  const void* x;       // (rows, Q)
  const void* r;       // (rows,) accumulation type; second order with normalize only
  void* g_bar;         // (rows, Q) second order only
  void* x_bar;         // (rows, Q) x̄ += (1 − m)ȳ when given
  int64_t Q;
  double m;
  bool normalize, detach;
};

struct ActBwdParams {
  const void* z;       // (rows, P)
  const void* a_bar;   // (rows, P)
  const void* d_bar;   // (rows, P) second order only
  const void* s;       // (P,)
  void* z_bar;         // (rows, P)
  void* d;             // (rows, P) second order only: φ'(z)·s, the W̄1 GEMM's operand
  int64_t P;
  int64_t grain;       // rows summed in the accumulation type before going into double
  bool detach;
};

// act_bwd works in tiles of at most this many columns (its column-sum block lives on the stack).
constexpr int64_t kActBwdColBlock = 2048;

// float32 kernels of one ISA; stages_cpu.cpp calls them over row ranges from its threads.
struct FloatKernels {
  const char* isa;
  void (*act_fwd[kNumActs])(const ActFwdParams&, int64_t, int64_t);
  void (*mix_fwd)(const MixFwdParams&, int64_t, int64_t);
  double (*mix_bwd)(const MixBwdParams&, int64_t, int64_t);
  // One tile (rows × at most kActBwdColBlock columns): adds its column sums into `sums`.
  void (*act_bwd[kNumActs])(const ActBwdParams&, int64_t, int64_t, int64_t, int64_t, double*);
  void (*axpy)(float* out, const float* in, float k, int64_t begin, int64_t end);
};

namespace avx2 { const FloatKernels* float_kernels(); }    // nullptr where not compiled in
namespace avx512 { const FloatKernels* float_kernels(); }

}  // namespace cpu
}  // namespace gradres
