// CUDA launchers for the fused stages of stages.h — torch-free (a parameter struct of
// ../stage_params.h and a stream), so `nvcc -c` checks them on machines without a GPU or a CUDA
// build of torch. Instantiated for float, double, __half and __nv_bfloat16. All tensors are
// contiguous (rows, cols); m = sigmoid(alpha[0]) is read on the device. Each launcher returns the
// first launch error (cudaGetLastError after every kernel); stages_cuda.cpp raises it.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cuda_runtime.h>

#include "../activations.h"
#include "../stage_params.h"

namespace gradres {
namespace cuda {

// Acc<T>: elementwise math, the saved norm r, the S-map s and its adjoint — float, double for
// double (at::opmath_type). Red<T>: every reduction (row norms, dots, ᾱ, column sums) — double
// for float and double inputs, as on CPU; float for the half types.
template <typename T> struct Acc { using type = float; };
template <> struct Acc<double> { using type = double; };
template <typename T> struct Red { using type = float; };
template <> struct Red<float> { using type = double; };
template <> struct Red<double> { using type = double; };

// ---- Launch geometry -------------------------------------------------------------------------
// One function per kernel, each a function of the shape only — never of the device (no SM
// count), so every reduction groups its partial sums the same way, and gives the same bits, on
// every GPU. Every kernel runs blocks of kThreads = 256 threads (8 warps). kTargetBlocks is four
// waves of a 132-SM H100 at 8 resident blocks per SM (2048 threads): the big memory-bound
// kernels aim at it (≥ 2 waves while registers leave ≥ 4 blocks per SM). bench/static.py mirrors
// these formulas.
constexpr int kThreads = 256;
constexpr int64_t kWaveBlocks = 132 * 8;             // 1056
constexpr int64_t kTargetBlocks = 4 * kWaveBlocks;   // 4224

constexpr int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
constexpr int64_t clamp64(int64_t v, int64_t lo, int64_t hi) { return v < lo ? lo : v > hi ? hi : v; }

// act_fwd, add_skip_grad (elementwise, grid-stride over n_vec vectors of 16 bytes or elements):
//   grid = min(ceil(n_vec / 256), 8·65535)
constexpr int64_t elementwise_blocks(int64_t n_vec) {
  return clamp64(ceil_div(n_vec, kThreads), 1, 65535 * 8);
}

// mix_fwd / mix_bwd on narrow rows (Q ≤ kWarpRowMax: the MLP): a warp per row,
//   grid = ceil(rows / 8)
constexpr int64_t kWarpRowMax = 2048;
constexpr int64_t warp_row_blocks(int64_t rows) { return ceil_div(rows, kThreads / 32); }
// Rows of at least kMinSegment elements take the warp path only while it fills two waves
// (rows >= 16896); fewer such rows take the split path below (a block per row at least: the
// bench's wide MLP, 16384 rows of 1024, gets 16384 blocks instead of 2048 = 1.94 waves).
constexpr bool warp_rows(int64_t rows, int64_t Q) {
  return Q <= kWarpRowMax && (Q < 1024 || warp_row_blocks(rows) >= 2 * kWaveBlocks);
}

// mix_fwd / mix_bwd on wide rows (conv: a row is a sample): each row in `splits` segments of at
// least kMinSegment elements, a block each:
//   max_splits(Q) = clamp(Q / 1024, 1, 256);  splits = clamp(ceil(4224 / rows), 1, max_splits(Q))
//   grid = rows · splits
constexpr int64_t kMinSegment = 1024;  // elements per block at least (4 per thread)
constexpr int64_t kMaxSplits = 256;
constexpr int64_t max_splits(int64_t Q) { return clamp64(Q / kMinSegment, 1, kMaxSplits); }
constexpr int64_t row_splits(int64_t rows, int64_t Q) {
  return clamp64(ceil_div(kTargetBlocks, std::max<int64_t>(rows, 1)), 1, max_splits(Q));
}

// act_bwd: blocks of 64 columns × 4 row lanes over a chunk of rows;
//   col_blocks = ceil(P / 64)
//   chunk_rows = max(16, ceil(rows / ceil(4224 / col_blocks)), ceil(rows / 65535))
//   chunks = ceil(rows / chunk_rows);  grid = (col_blocks, chunks)
// One chunk (wide conv rows: P = Cm·H·W) writes the column sums straight out; several (narrow
// MLP rows) leave per-chunk partials for col_partial_sum and col_final.
constexpr int kActBwdCols = 64;
constexpr int kActBwdLanes = kThreads / kActBwdCols;  // 4
constexpr int64_t act_bwd_col_blocks(int64_t P) { return std::max<int64_t>(1, ceil_div(P, kActBwdCols)); }
constexpr int64_t act_bwd_chunk_rows(int64_t rows, int64_t P) {
  return std::max({int64_t(16),
                   ceil_div(rows, ceil_div(kTargetBlocks, act_bwd_col_blocks(P))),
                   ceil_div(rows, 65535)});
}
constexpr int64_t act_bwd_chunks(int64_t rows, int64_t P) {
  return std::max<int64_t>(1, ceil_div(rows, act_bwd_chunk_rows(rows, P)));
}

// col_partial_sum (stage 1 of the column sums over act_bwd's chunks, W = P or 2P columns):
// blocks of 32 columns × 8 chunk lanes, each over a group of chunks:
//   groups = clamp(ceil(chunks / 64), 1, 64);  grid = (ceil(W / 32), groups)
// col_final (stage 2): a thread per column adding the groups' sums in order: grid = ceil(W / 256)
constexpr int64_t col_groups(int64_t chunks) { return clamp64(ceil_div(chunks, 64), 1, 64); }
constexpr int64_t col_partial_blocks_x(int64_t W) { return std::max<int64_t>(1, ceil_div(W, 32)); }
constexpr int64_t col_final_blocks(int64_t W) { return std::max<int64_t>(1, ceil_div(W, kThreads)); }

// ᾱ from `count` per-row (or per-segment) partials: stage 1 sums groups of them,
//   alpha_groups = clamp(ceil(count / 2048), 1, 256);  grid = alpha_groups
// stage 2 (alpha_bar_kernel) adds the groups' sums in one block: grid = 1.
constexpr int64_t kMaxAlphaGroups = 256;
constexpr int64_t alpha_groups(int64_t count) { return clamp64(ceil_div(count, 2048), 1, kMaxAlphaGroups); }

// smap: a block per (256 positions, channel): grid = (ceil(H·W / 256), C)
constexpr int64_t smap_blocks_x(int64_t H, int64_t W) { return std::max<int64_t>(1, ceil_div(H * W, kThreads)); }
// smap_adjoint: a warp per (c, u, v): grid = ceil(C·kh·kw / 8)
constexpr int64_t smap_adjoint_blocks(int64_t C, int64_t kh, int64_t kw) {
  return std::max<int64_t>(1, ceil_div(C * kh * kw, kThreads / 32));
}

// ---- Launchers -------------------------------------------------------------------------------
// One per stage, reading its parameter struct (../stage_params.h) with T the tensors' element type.
template <typename T>
cudaError_t act_fwd(const ActFwdParams& p, cudaStream_t stream);

// Scratch of mix_fwd and mix_bwd: row_scratch_elems(rows, Q) elements of Red<T>::type (partial
// sums per row or per row segment, then ᾱ's group sums, added up in a fixed order).
int64_t row_scratch_elems(int64_t rows, int64_t Q);

template <typename T>
cudaError_t mix_fwd(const MixFwdParams& p, void* scratch, cudaStream_t stream);

template <typename T>
cudaError_t mix_bwd(const MixBwdParams& p, void* scratch, cudaStream_t stream);

// col_partial: act_bwd_scratch_elems(rows, P, detach) scratch elements of Red<T>::type.
template <typename T>
cudaError_t act_bwd(const ActBwdParams& p, void* col_partial, cudaStream_t stream);
int64_t act_bwd_scratch_elems(int64_t rows, int64_t P, bool detach);

template <typename T>
cudaError_t add_skip_grad(const AddSkipGradParams& p, cudaStream_t stream);

// The conv S-map (one kernel: W2's channel sums and the border masks' taps together) and its
// adjoint, in Acc<T>.
template <typename T>
cudaError_t smap(const SmapParams& p, cudaStream_t stream);
template <typename T>
cudaError_t smap_adjoint(const SmapAdjointParams& p, cudaStream_t stream);

}  // namespace cuda
}  // namespace gradres
