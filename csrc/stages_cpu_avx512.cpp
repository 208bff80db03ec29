// The float32 CPU loops (stages_cpu_loops.h) compiled for AVX-512 (F, DQ, BW, VL); stages_cpu.cpp
// uses them on CPUs that have all four. Empty (nullptr table) off x86-64 or with a compiler other
// than GCC.
#include "stages_cpu_kernels.h"  // with every header the loops use: before the target pragma

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#pragma GCC push_options
#pragma GCC target("avx512f,avx512dq,avx512bw,avx512vl,avx2,fma")
#define GRADRES_CPU_ISA avx512_loops
#include "stages_cpu_loops.h"
#pragma GCC pop_options
const gradres::cpu::FloatKernels* gradres::cpu::avx512::float_kernels() {
  return avx512_loops::float_kernels_here("avx512");
}
#else
const gradres::cpu::FloatKernels* gradres::cpu::avx512::float_kernels() { return nullptr; }
#endif
