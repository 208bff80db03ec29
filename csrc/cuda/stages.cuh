// CUDA launchers for the fused stages of stages.h — torch-free (raw pointers, sizes, a stream),
// so `nvcc -c` checks them on machines without a GPU or a CUDA build of torch. Instantiated for
// float, double, __half and __nv_bfloat16. All tensors are contiguous (rows, cols);
// m = sigmoid(alpha[0]) is read on the device.
#pragma once

#include <cstdint>
#include <cuda_runtime.h>

#include "../activations.h"

namespace gradres {
namespace cuda {

// Acc<T>: elementwise math and the saved norm r — float, double for double (at::opmath_type).
// Red<T>: every reduction (row norms, dots, ᾱ, column sums) — double for float and double inputs,
// as on CPU; float for the half types.
template <typename T> struct Acc { using type = float; };
template <> struct Acc<double> { using type = double; };
template <typename T> struct Red { using type = float; };
template <> struct Red<float> { using type = double; };
template <> struct Red<double> { using type = double; };

// a = φ(z), d = φ'(z)·s[p]
template <typename T>
void act_fwd(const T* z, const T* s, T* a, T* d, int64_t rows, int64_t P, Act act,
             cudaStream_t stream);

// Scratch of mix_fwd and mix_bwd: row_scratch_elems(rows, Q) elements of Red<T>::type (partial
// sums per row or per row segment, added up in a fixed order).
int64_t row_scratch_elems(int64_t rows, int64_t Q);

// per row: r = sqrt(Σg² + eps²); g ← g/r (normalize); f ← f + (1−m)x + m·ĝ
template <typename T>
void mix_fwd(T* f, T* g, const T* x, const T* alpha, typename Acc<T>::type* r, void* scratch,
             int64_t rows, int64_t Q, bool normalize, double eps, cudaStream_t stream);

// alpha_bar = m(1−m)·Σ ȳ(ĝ − x); second order: g_bar = (mȳ − ĝ(ĝ·mȳ))/r (or mȳ);
// x_bar (may be null): x_bar += (1 − m)·ȳ in the same pass.
template <typename T>
void mix_bwd(const T* y_bar, const T* g_hat, const T* x, const typename Acc<T>::type* r,
             const T* alpha, T* g_bar, T* alpha_bar, T* x_bar, void* scratch,
             int64_t rows, int64_t Q, bool normalize, bool detach, cudaStream_t stream);

// z̄ = ā·φ'(z) [+ d̄·s·φ''(z)]; d = φ'(z)·s; column sums of z̄ and of d̄·φ'(z).
// col_partial: act_bwd_scratch_elems(rows, P, detach) scratch elements of Red<T>::type.
template <typename T>
void act_bwd(const T* z, const T* a_bar, const T* d_bar, const T* s, T* z_bar, T* d,
             T* zbar_colsum, T* s_bar, void* col_partial, int64_t rows, int64_t P, Act act,
             bool detach, cudaStream_t stream);
int64_t act_bwd_scratch_elems(int64_t rows, int64_t P, bool detach);

// out += (1 − m)·ȳ
template <typename T>
void add_skip_grad(T* out, const T* y_bar, const T* alpha, int64_t n, cudaStream_t stream);

}  // namespace cuda
}  // namespace gradres
