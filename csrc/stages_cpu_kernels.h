// The CPU stages' inner loops, compiled once per instruction set: their parameters and tables.
//
// stages_cpu.cpp owns the stages (tensors, threads, the reductions' chunking); the loops over a
// range of rows (stages_cpu_loops.h) work on raw pointers through the torch-free parameter
// structs of stage_params.h. stages_cpu.cpp compiles them for baseline x86-64 (every dtype);
// stages_cpu_avx2.cpp and stages_cpu_avx512.cpp compile the float32 ones again under
// `#pragma GCC target`, and
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
#include <cmath>
#include <cstdint>
#include <type_traits>

#include "activations.h"
#include "stage_params.h"

namespace gradres {
namespace cpu {

// Rows per block of work: enough per chunk to amortize a thread hand-off; also the rows act_bwd
// sums in the accumulation type before adding into double.
inline int64_t row_grain(int64_t cols) {
  return std::max<int64_t>(1, 32768 / std::max<int64_t>(cols, 1));
}

// m = sigmoid(alpha[0]), in double from the host alpha (as ATen's item<double>() would read it).
template <typename scalar_t>
double mix_weight(const void* alpha) {
  return 1.0 / (1.0 + std::exp(-double(*static_cast<const scalar_t*>(alpha))));
}

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
