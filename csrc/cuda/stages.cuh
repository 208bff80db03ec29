// CUDA launchers for the fused stages of stages.h — torch-free (a parameter struct of
// ../stage_params.h and a stream), so `nvcc -c` checks them on machines without a GPU or a CUDA
// build of torch. Instantiated for float, double, __half and __nv_bfloat16. All tensors are
// contiguous (rows, cols); m = sigmoid(alpha[0]) is read on the device.
#pragma once

#include <cstdint>
#include <cuda_runtime.h>

#include "../activations.h"
#include "../stage_params.h"

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

// The launchers: one per stage, reading its parameter struct (../stage_params.h) with T the
// tensors' element type.
template <typename T>
void act_fwd(const ActFwdParams& p, cudaStream_t stream);

// Scratch of mix_fwd and mix_bwd: row_scratch_elems(rows, Q) elements of Red<T>::type (partial
// sums per row or per row segment, added up in a fixed order).
int64_t row_scratch_elems(int64_t rows, int64_t Q);

template <typename T>
void mix_fwd(const MixFwdParams& p, void* scratch, cudaStream_t stream);

template <typename T>
void mix_bwd(const MixBwdParams& p, void* scratch, cudaStream_t stream);

// col_partial: act_bwd_scratch_elems(rows, P, detach) scratch elements of Red<T>::type.
template <typename T>
void act_bwd(const ActBwdParams& p, void* col_partial, cudaStream_t stream);
int64_t act_bwd_scratch_elems(int64_t rows, int64_t P, bool detach);

template <typename T>
void add_skip_grad(const AddSkipGradParams& p, cudaStream_t stream);

}  // namespace cuda
}  // namespace gradres
