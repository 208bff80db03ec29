// CUDA kernels for the fused stages (see stages.cuh). Torch-free: compiled by `nvcc -c` in CI.
//
// Reductions are deterministic: per-row or per-chunk partials written to scratch, then summed in a
// fixed order by a second kernel — no float atomics, and every grid a function of the shape only
// (stages.cuh's launch geometry), so results are bitwise reproducible, on any GPU.
#include "stages.cuh"

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>

namespace gradres {
namespace cuda {
namespace {

template <typename T> __device__ __forceinline__ typename Acc<T>::type to_acc(T v) {
  return static_cast<typename Acc<T>::type>(v);
}
template <> __device__ __forceinline__ float to_acc<__half>(__half v) { return __half2float(v); }
template <> __device__ __forceinline__ float to_acc<__nv_bfloat16>(__nv_bfloat16 v) {
  return __bfloat162float(v);
}
template <typename T, typename A> __device__ __forceinline__ T from_acc(A v) { return static_cast<T>(v); }
template <> __device__ __forceinline__ __half from_acc<__half, float>(float v) { return __float2half(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_acc<__nv_bfloat16, float>(float v) {
  return __float2bfloat16(v);
}

template <typename T> __device__ __forceinline__ typename Acc<T>::type mix_weight(const T* alpha) {
  using A = typename Acc<T>::type;
  return A(1) / (A(1) + exp(-to_acc(alpha[0])));
}

// A launch's error, returned by the launchers (stages_cuda.cpp raises it).
#define GRADRES_RETURN_IF_LAUNCH_FAILED()                 \
  do {                                                    \
    const cudaError_t launch_error = cudaGetLastError();  \
    if (launch_error != cudaSuccess) return launch_error; \
  } while (0)

// 16-byte vector of T for aligned loads/stores.
template <typename T, int N> struct alignas(sizeof(T) * N) Vec { T v[N]; };

bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

// ---- act_fwd ----------------------------------------------------------------------------------
template <typename T, Act A, int V>
__global__ void act_fwd_kernel(const T* __restrict__ z, const typename Acc<T>::type* __restrict__ s,
                               T* __restrict__ a,
                               T* __restrict__ d, int64_t n_vec, int64_t P) {
  using Ops = ActOps<A>;
  using Acc_t = typename Acc<T>::type;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n_vec;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t base = i * V;
    const int64_t p0 = base % P;  // P % V == 0 when V > 1: a vector never wraps a row
    Vec<T, V> zv = *reinterpret_cast<const Vec<T, V>*>(z + base);
    Vec<T, V> av, dv;
#pragma unroll
    for (int k = 0; k < V; ++k) {
      const Acc_t v = to_acc(zv.v[k]);
      av.v[k] = from_acc<T>(Ops::f(v));
      dv.v[k] = from_acc<T>(Ops::d1(v) * s[p0 + k]);
    }
    *reinterpret_cast<Vec<T, V>*>(a + base) = av;
    *reinterpret_cast<Vec<T, V>*>(d + base) = dv;
  }
}

// ---- row reductions (mix_fwd, mix_bwd) ---------------------------------------------------------
// Narrow rows (warp_rows: Q ≤ kWarpRowMax, the MLP) get a warp each and run in one pass. Wide rows (conv: a
// row is a whole sample) are split into row_splits(rows, Q) segments, one 256-thread block each,
// so a small batch still fills the device: a first pass writes each segment's partial sums, a
// second pass adds a row's partials in a fixed order (every block of the row alike) and does the
// elementwise part. No atomics, so results do not depend on scheduling.

// Sum over the G threads of a group (G = 32: a warp; G = blockDim.x: the block; then every thread
// of the block must call it).
template <typename A, int G>
__device__ __forceinline__ A group_sum(A v, A* shared) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
  if (G <= 32) return v;
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  __syncthreads();
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  A t = A(0);
#pragma unroll
  for (int w = 0; w < G / 32; ++w) t += shared[w];
  return t;
}

// Warp-per-row: the row `n` of this thread and its lane `t` (blockDim.x / 32 rows per block).
struct WarpRow {
  int64_t n;
  int t;
  __device__ WarpRow() : n(int64_t(blockIdx.x) * (blockDim.x / 32) + threadIdx.x / 32), t(threadIdx.x % 32) {}
};

// Split rows: block b handles segment s = b % splits of row n = b / splits, columns [begin, end).
struct RowSegment {
  int64_t n, s, begin, end;
  __device__ RowSegment(int64_t Q, int64_t splits) {
    const int64_t len = (Q + splits - 1) / splits;
    n = blockIdx.x / splits;
    s = blockIdx.x % splits;
    begin = s * len < Q ? s * len : Q;
    end = begin + len < Q ? begin + len : Q;
  }
};

// Sum of the `splits` partials of row n, at part[(n·splits + s)·stride], in segment order.
template <typename R>
__device__ __forceinline__ R row_total(const R* part, int64_t n, int64_t splits, int stride) {
  R t = R(0);
  for (int64_t s = 0; s < splits; ++s) t += part[(n * splits + s) * stride];
  return t;
}

// f ← f + (1−m)x + m·g·scale over columns [begin, end) of row n, step `step` from `first`.
template <typename T>
__device__ __forceinline__ void mix_row(T* f, T* g, const T* x, int64_t n, int64_t Q,
                                       int64_t first, int64_t end, int step,
                                       typename Acc<T>::type m, typename Acc<T>::type scale) {
  using A = typename Acc<T>::type;
  for (int64_t q = first; q < end; q += step) {
    const int64_t i = n * Q + q;
    const A gh = to_acc(g[i]) * scale;
    g[i] = from_acc<T>(gh);
    f[i] = from_acc<T>(to_acc(f[i]) + (A(1) - m) * to_acc(x[i]) + m * gh);
  }
}

template <typename T>
__global__ void mix_fwd_warp_kernel(T* __restrict__ f, T* __restrict__ g, const T* __restrict__ x,
                                    const T* __restrict__ alpha, typename Acc<T>::type* __restrict__ r,
                                    int64_t rows, int64_t Q, bool normalize, double eps) {
  using A = typename Acc<T>::type;
  using R = typename Red<T>::type;
  const WarpRow row;
  if (row.n >= rows) return;  // whole warps exit together
  A scale = A(1);
  if (normalize) {
    R ss = R(0);
    for (int64_t q = row.t; q < Q; q += 32) { const R v = to_acc(g[row.n * Q + q]); ss += v * v; }
    ss = group_sum<R, 32>(ss, nullptr);
    const R rr = sqrt(ss + R(eps) * R(eps));
    if (row.t == 0) r[row.n] = A(rr);
    scale = A(R(1) / rr);
  }
  mix_row(f, g, x, row.n, Q, row.t, Q, 32, mix_weight(alpha), scale);
}

// Split pass 1 of mix_fwd (normalize only): Σ g² of each segment.
template <typename T>
__global__ void sum_squares_kernel(const T* __restrict__ g, typename Red<T>::type* __restrict__ part,
                                   int64_t Q, int64_t splits) {
  using R = typename Red<T>::type;
  __shared__ R shared[kThreads / 32];
  const RowSegment seg(Q, splits);
  R ss = R(0);
  for (int64_t q = seg.begin + threadIdx.x; q < seg.end; q += blockDim.x) {
    const R v = to_acc(g[seg.n * Q + q]);
    ss += v * v;
  }
  ss = group_sum<R, kThreads>(ss, shared);
  if (threadIdx.x == 0) part[blockIdx.x] = ss;
}

// Split pass 2 of mix_fwd: r from the row's partials, then the mix over the segment.
template <typename T>
__global__ void mix_fwd_split_kernel(T* __restrict__ f, T* __restrict__ g, const T* __restrict__ x,
                                     const T* __restrict__ alpha, typename Acc<T>::type* __restrict__ r,
                                     const typename Red<T>::type* __restrict__ part, int64_t Q,
                                     int64_t splits, bool normalize, double eps) {
  using A = typename Acc<T>::type;
  using R = typename Red<T>::type;
  const RowSegment seg(Q, splits);
  A scale = A(1);
  if (normalize) {
    const R rr = sqrt(row_total(part, seg.n, splits, 1) + R(eps) * R(eps));
    if (seg.s == 0 && threadIdx.x == 0) r[seg.n] = A(rr);
    scale = A(R(1) / rr);
  }
  mix_row(f, g, x, seg.n, Q, seg.begin + threadIdx.x, seg.end, blockDim.x, mix_weight(alpha), scale);
}

// Σ ȳ(ĝ − x) and ĝ·ȳ over columns [first, end) (step `step`) of row n; with x_bar, also
// x_bar += (1 − m)ȳ there.
template <typename T>
struct MixBwdSums {
  typename Red<T>::type part, dot;
  __device__ MixBwdSums(const T* y_bar, const T* g_hat, const T* x, T* x_bar,
                        typename Acc<T>::type m, int64_t n, int64_t Q, int64_t first,
                        int64_t end, int step)
      : part(0), dot(0) {
    using A = typename Acc<T>::type;
    using R = typename Red<T>::type;
    for (int64_t q = first; q < end; q += step) {
      const int64_t i = n * Q + q;
      const A y = to_acc(y_bar[i]), gh = to_acc(g_hat[i]);
      part += R(y) * (R(gh) - R(to_acc(x[i])));
      dot += R(gh) * R(y);
      if (x_bar) x_bar[i] = from_acc<T>(to_acc(x_bar[i]) + (A(1) - m) * y);
    }
  }
};

// ḡ = (mȳ − ĝ(ĝ·mȳ))/r (or mȳ) over columns [first, end) of row n.
template <typename T>
__device__ __forceinline__ void g_bar_row(const T* y_bar, const T* g_hat, T* g_bar,
                                          typename Acc<T>::type m,
                                          typename Acc<T>::type dot,
                                          typename Acc<T>::type inv_r, bool normalize, int64_t n,
                                          int64_t Q, int64_t first, int64_t end, int step) {
  using A = typename Acc<T>::type;
  for (int64_t q = first; q < end; q += step) {
    const int64_t i = n * Q + q;
    const A y = to_acc(y_bar[i]);
    const A gb = normalize ? m * (y - to_acc(g_hat[i]) * dot) * inv_r : m * y;
    g_bar[i] = from_acc<T>(gb);
  }
}

template <typename T>
__global__ void mix_bwd_warp_kernel(const T* __restrict__ y_bar, const T* __restrict__ g_hat,
                                    const T* __restrict__ x, const typename Acc<T>::type* __restrict__ r,
                                    const T* __restrict__ alpha, T* __restrict__ g_bar,
                                    T* __restrict__ x_bar,
                                    typename Red<T>::type* __restrict__ row_part, int64_t rows,
                                    int64_t Q, bool normalize, bool detach) {
  using A = typename Acc<T>::type;
  using R = typename Red<T>::type;
  const WarpRow row;
  if (row.n >= rows) return;
  const A m = mix_weight(alpha);
  const MixBwdSums<T> sums(y_bar, g_hat, x, x_bar, m, row.n, Q, row.t, Q, 32);
  const R part = group_sum<R, 32>(sums.part, nullptr);
  const R dot = group_sum<R, 32>(sums.dot, nullptr);
  if (row.t == 0) row_part[row.n] = part;
  if (detach) return;
  const A inv_r = normalize ? A(1) / r[row.n] : A(1);
  g_bar_row(y_bar, g_hat, g_bar, m, A(dot), inv_r, normalize, row.n, Q, row.t, Q, 32);
}

// Split pass 1 of mix_bwd: the segment's two sums at seg_part[2b], seg_part[2b + 1] (and x_bar).
template <typename T>
__global__ void mix_bwd_sums_kernel(const T* __restrict__ y_bar, const T* __restrict__ g_hat,
                                    const T* __restrict__ x, const T* __restrict__ alpha,
                                    T* __restrict__ x_bar, typename Red<T>::type* __restrict__ seg_part,
                                    int64_t Q, int64_t splits) {
  using R = typename Red<T>::type;
  __shared__ R shared[kThreads / 32];
  const RowSegment seg(Q, splits);
  const MixBwdSums<T> sums(y_bar, g_hat, x, x_bar, mix_weight(alpha), seg.n, Q,
                           seg.begin + threadIdx.x, seg.end, blockDim.x);
  const R part = group_sum<R, kThreads>(sums.part, shared);
  const R dot = group_sum<R, kThreads>(sums.dot, shared);
  if (threadIdx.x == 0) {
    seg_part[2 * int64_t(blockIdx.x)] = part;
    seg_part[2 * int64_t(blockIdx.x) + 1] = dot;
  }
}

// Split pass 2 of mix_bwd (second order only): ḡ over the segment, from the row's ĝ·ȳ.
template <typename T>
__global__ void g_bar_split_kernel(const T* __restrict__ y_bar, const T* __restrict__ g_hat,
                                   const typename Acc<T>::type* __restrict__ r,
                                   const T* __restrict__ alpha, T* __restrict__ g_bar,
                                   const typename Red<T>::type* __restrict__ seg_part, int64_t Q,
                                   int64_t splits, bool normalize) {
  using A = typename Acc<T>::type;
  const RowSegment seg(Q, splits);
  const A dot = A(row_total(seg_part + 1, seg.n, splits, 2));
  const A inv_r = normalize ? A(1) / r[seg.n] : A(1);
  g_bar_row(y_bar, g_hat, g_bar, mix_weight(alpha), dot, inv_r, normalize, seg.n, Q,
            seg.begin + threadIdx.x, seg.end, blockDim.x);
}

// ᾱ, stage 1: block g sums part[i·stride] over its group of i < count (alpha_groups(count)
// groups of equal length), in a fixed order, into group_sum_out[g].
template <typename T>
__global__ void alpha_partial_kernel(const typename Red<T>::type* __restrict__ part, int64_t count,
                                     int stride, typename Red<T>::type* __restrict__ group_sums) {
  using R = typename Red<T>::type;
  __shared__ R shared[kThreads / 32];
  const int64_t len = (count + gridDim.x - 1) / gridDim.x;
  const int64_t begin = blockIdx.x * len, end = begin + len < count ? begin + len : count;
  R s = R(0);
  for (int64_t i = begin + threadIdx.x; i < end; i += blockDim.x) s += part[i * stride];
  s = group_sum<R, kThreads>(s, shared);
  if (threadIdx.x == 0) group_sums[blockIdx.x] = s;
}

// ᾱ, stage 2: ᾱ = m(1−m)·Σ_g group_sums[g], one block.
template <typename T>
__global__ void alpha_bar_kernel(const typename Red<T>::type* __restrict__ group_sums,
                                 int64_t groups, const T* __restrict__ alpha,
                                 T* __restrict__ alpha_bar) {
  using R = typename Red<T>::type;
  __shared__ R shared[kThreads / 32];
  R s = R(0);
  for (int64_t i = threadIdx.x; i < groups; i += blockDim.x) s += group_sums[i];
  s = group_sum<R, kThreads>(s, shared);
  if (threadIdx.x == 0) {
    const R m = mix_weight(alpha);
    alpha_bar[0] = from_acc<T>(m * (R(1) - m) * s);
  }
}

// ---- act_bwd: elementwise + column sums over a chunk of rows --------------------------------------
// A block: kActBwdCols columns × kActBwdLanes row lanes (lane l takes rows l, l + 4, ... of the
// chunk), its lanes' sums added in lane order in shared memory. One chunk: the block writes the
// column sums out (zbar_colsum in T, s_bar in Acc<T>); several: its chunk's partials at
// col_part[chunk·W + p] (z̄ sums) and [chunk·W + P + p] (s̄ sums), W = (detach ? 1 : 2)·P.
template <typename T, Act A_>
__global__ void act_bwd_kernel(const T* __restrict__ z, const T* __restrict__ a_bar,
                               const T* __restrict__ d_bar,
                               const typename Acc<T>::type* __restrict__ s,
                               T* __restrict__ z_bar, T* __restrict__ d, T* __restrict__ a,
                               typename Red<T>::type* __restrict__ col_part,
                               T* __restrict__ zbar_colsum,
                               typename Acc<T>::type* __restrict__ s_bar, int64_t rows,
                               int64_t P, int64_t chunk_rows, bool detach) {
  using Ops = ActOps<A_>;
  using A = typename Acc<T>::type;
  using R = typename Red<T>::type;
  __shared__ R shared[2][kActBwdLanes][kActBwdCols];
  const int col = threadIdx.x % kActBwdCols, lane = threadIdx.x / kActBwdCols;
  const int64_t p = int64_t(blockIdx.x) * kActBwdCols + col;
  const int64_t chunk = blockIdx.y;
  R zs = R(0), ss = R(0);
  if (p < P) {
    const A sv = detach ? A(0) : s[p];  // s is read only in second order
    const int64_t n_begin = chunk * chunk_rows;
    const int64_t n_end = n_begin + chunk_rows < rows ? n_begin + chunk_rows : rows;
    for (int64_t n = n_begin + lane; n < n_end; n += kActBwdLanes) {
      const int64_t i = n * P + p;
      const A v = to_acc(z[i]);
      const A d1 = Ops::d1(v);
      A zb = to_acc(a_bar[i]) * d1;
      if (!detach) {
        const A db = to_acc(d_bar[i]);
        if (!Ops::kD2IsZero) zb += db * sv * Ops::d2(v);
        ss += db * d1;
        d[i] = from_acc<T>(d1 * sv);
      }
      if (!Ops::kSavesOutput && a) a[i] = from_acc<T>(Ops::f(v));  // for the W̄2 GEMM after
      z_bar[i] = from_acc<T>(zb);
      zs += zb;
    }
  }
  shared[0][lane][col] = zs;
  shared[1][lane][col] = ss;
  __syncthreads();
  if (lane != 0 || p >= P) return;
  R zt = R(0), st = R(0);
#pragma unroll
  for (int l = 0; l < kActBwdLanes; ++l) {
    zt += shared[0][l][col];
    st += shared[1][l][col];
  }
  if (gridDim.y == 1) {
    zbar_colsum[p] = from_acc<T>(zt);
    if (!detach) s_bar[p] = A(st);
    return;
  }
  const int64_t W = detach ? P : 2 * P;
  col_part[chunk * W + p] = zt;
  if (!detach) col_part[chunk * W + P + p] = st;
}

// Column sums, stage 1: block (x, g) adds chunks [g·len, (g + 1)·len) of columns
// [32x, 32x + 32) of col_part (chunks × W), 8 chunk lanes in lane order, into
// group_part[g·W + column].
template <typename R>
__global__ void col_partial_sum_kernel(const R* __restrict__ col_part, int64_t chunks, int64_t W,
                                       R* __restrict__ group_part) {
  constexpr int kCols = 32, kLanes = kThreads / kCols;
  __shared__ R shared[kLanes][kCols];
  const int col = threadIdx.x % kCols, lane = threadIdx.x / kCols;
  const int64_t q = int64_t(blockIdx.x) * kCols + col;
  const int64_t len = (chunks + gridDim.y - 1) / gridDim.y;
  const int64_t begin = blockIdx.y * len, end = begin + len < chunks ? begin + len : chunks;
  R t = R(0);
  if (q < W)
    for (int64_t c = begin + lane; c < end; c += kLanes) t += col_part[c * W + q];
  shared[lane][col] = t;
  __syncthreads();
  if (lane != 0 || q >= W) return;
  R total = R(0);
#pragma unroll
  for (int l = 0; l < kLanes; ++l) total += shared[l][col];
  group_part[blockIdx.y * W + q] = total;
}

// Column sums, stage 2: a thread per column adds the groups' sums in order; columns [0, P) are
// z̄'s (zbar_colsum, in T), [P, 2P) s̄'s (s_bar, in Acc<T>).
template <typename T>
__global__ void col_final_kernel(const typename Red<T>::type* __restrict__ group_part,
                                 int64_t groups, int64_t P, int64_t W,
                                 T* __restrict__ zbar_colsum,
                                 typename Acc<T>::type* __restrict__ s_bar) {
  using R = typename Red<T>::type;
  const int64_t q = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (q >= W) return;
  R t = R(0);
  for (int64_t g = 0; g < groups; ++g) t += group_part[g * W + q];
  if (q < P)
    zbar_colsum[q] = from_acc<T>(t);
  else
    s_bar[q - P] = typename Acc<T>::type(t);
}

// ---- the conv S-map and its adjoint (docs/DESIGN.md §1) --------------------------------------
// Taps t of a k-wide 'same' kernel that reach position p of n: [max(0, p + k/2 − n + 1),
// min(k − 1, p + k/2)] (csrc/blocks.h first_tap / last_tap); positions a tap t reaches:
// [max(0, t − k/2), min(n − 1, t − k/2 + n − 1)].
__device__ __forceinline__ int64_t first_tap(int64_t p, int64_t k, int64_t n) {
  return p + k / 2 - n + 1 > 0 ? p + k / 2 - n + 1 : 0;
}
__device__ __forceinline__ int64_t last_tap(int64_t p, int64_t k) {
  return p + k / 2 < k - 1 ? p + k / 2 : k - 1;
}
__device__ __forceinline__ int64_t feature_offset(int64_t c, int64_t i, int64_t j, int64_t C,
                                                  int64_t H, int64_t W, bool channels_last) {
  return channels_last ? (i * W + j) * C + c : (c * H + i) * W + j;
}

// S[c, i, j] for channel c = blockIdx.y and positions blockIdx.x·256 + thread: the block first
// sums W2 over its output channels for c (ws[u·kw + v], in shared memory), then each thread adds
// the taps that reach (i, j) — row by row (Σ_u Σ_v), as the CPU's smap_cpu does. Acc<T> throughout.
template <typename T>
__global__ void smap_kernel(const T* __restrict__ w2, typename Acc<T>::type* __restrict__ s,
                            int64_t O, int64_t C, int64_t kh, int64_t kw, int64_t H, int64_t W,
                            bool channels_last) {
  using A = typename Acc<T>::type;
  extern __shared__ unsigned char smap_shared[];
  A* ws = reinterpret_cast<A*>(smap_shared);
  const int64_t c = blockIdx.y, taps = kh * kw;
  for (int64_t t = threadIdx.x; t < taps; t += blockDim.x) {
    A sum = A(0);
    for (int64_t o = 0; o < O; ++o) sum += to_acc(w2[(o * C + c) * taps + t]);
    ws[t] = sum;
  }
  __syncthreads();
  const int64_t q = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (q >= H * W) return;
  const int64_t i = q / W, j = q % W;
  A total = A(0);
  for (int64_t u = first_tap(i, kh, H); u <= last_tap(i, kh); ++u) {
    A row = A(0);
    for (int64_t v = first_tap(j, kw, W); v <= last_tap(j, kw); ++v) row += ws[u * kw + v];
    total += row;
  }
  s[feature_offset(c, i, j, C, H, W, channels_last)] = total;
}

// t[c, u, v] = Σ S̄[c, i, j] over the positions (i, j) tap (u, v) reaches: a warp per (c, u, v),
// its lanes over the positions in a fixed order, summed in Red<T> and added by shuffles.
template <typename T>
__global__ void smap_adjoint_kernel(const typename Acc<T>::type* __restrict__ s_bar,
                                    typename Acc<T>::type* __restrict__ t, int64_t C, int64_t kh,
                                    int64_t kw, int64_t H, int64_t W, bool channels_last) {
  using R = typename Red<T>::type;
  const int64_t k = int64_t(blockIdx.x) * (blockDim.x / 32) + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (k >= C * kh * kw) return;  // whole warps exit together
  const int64_t c = k / (kh * kw), u = (k / kw) % kh, v = k % kw;
  const int64_t i0 = u - kh / 2 > 0 ? u - kh / 2 : 0, i1 = u - kh / 2 + H < H ? u - kh / 2 + H : H;
  const int64_t j0 = v - kw / 2 > 0 ? v - kw / 2 : 0, j1 = v - kw / 2 + W < W ? v - kw / 2 + W : W;
  const int64_t ni = i1 - i0, nj = j1 - j0;
  R sum = R(0);
  for (int64_t e = lane; e < ni * nj; e += 32)
    sum += R(s_bar[feature_offset(c, i0 + e / nj, j0 + e % nj, C, H, W, channels_last)]);
  sum = group_sum<R, 32>(sum, nullptr);
  if (lane == 0) t[k] = typename Acc<T>::type(sum);
}

template <typename T, int V>
__global__ void add_skip_grad_kernel(T* __restrict__ out, const T* __restrict__ y_bar,
                                     const T* __restrict__ alpha, int64_t n_vec) {
  using A = typename Acc<T>::type;
  const A k = A(1) - mix_weight(alpha);
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n_vec;
       i += int64_t(gridDim.x) * blockDim.x) {
    Vec<T, V> o = reinterpret_cast<Vec<T, V>*>(out)[i];
    const Vec<T, V> y = reinterpret_cast<const Vec<T, V>*>(y_bar)[i];
#pragma unroll
    for (int j = 0; j < V; ++j) o.v[j] = from_acc<T>(to_acc(o.v[j]) + k * to_acc(y.v[j]));
    reinterpret_cast<Vec<T, V>*>(out)[i] = o;
  }
}

}  // namespace

int64_t row_scratch_elems(int64_t rows, int64_t Q) {
  return (warp_rows(rows, Q) ? rows : 2 * rows * max_splits(Q)) + kMaxAlphaGroups;
}

template <typename T>
cudaError_t act_fwd(const ActFwdParams& p, cudaStream_t stream) {
  const T* z = static_cast<const T*>(p.z);
  const auto* s = static_cast<const typename Acc<T>::type*>(p.s);
  T* a = static_cast<T*>(p.a);
  T* d = static_cast<T*>(p.d);
  const int64_t P = p.P, n = p.rows * p.P;
  const Act act = p.act;
  if (n == 0) return cudaSuccess;
  constexpr int V = 16 / sizeof(T);
  const bool vec = P % V == 0 && aligned16(z) && aligned16(a) && aligned16(d);
  GRADRES_DISPATCH_ACT(act, [&] {
    if (vec)
      act_fwd_kernel<T, A, V><<<static_cast<unsigned>(elementwise_blocks(n / V)), kThreads, 0,
                                stream>>>(z, s, a, d, n / V, P);
    else
      act_fwd_kernel<T, A, 1><<<static_cast<unsigned>(elementwise_blocks(n)), kThreads, 0,
                                stream>>>(z, s, a, d, n, P);
  });
  return cudaGetLastError();
}

template <typename T>
cudaError_t mix_fwd(const MixFwdParams& p, void* scratch, cudaStream_t stream) {
  T* f = static_cast<T*>(p.f);
  T* g = static_cast<T*>(p.g);
  const T* x = static_cast<const T*>(p.x);
  const T* alpha = static_cast<const T*>(p.alpha);
  auto* r = static_cast<typename Acc<T>::type*>(p.r);
  const int64_t rows = p.rows, Q = p.Q;
  const bool normalize = p.normalize;
  const double eps = p.eps;
  if (rows == 0) return cudaSuccess;
  if (warp_rows(rows, Q)) {
    mix_fwd_warp_kernel<T><<<static_cast<unsigned>(warp_row_blocks(rows)), kThreads, 0, stream>>>(
        f, g, x, alpha, r, rows, Q, normalize, eps);
    return cudaGetLastError();
  }
  using R = typename Red<T>::type;
  R* part = static_cast<R*>(scratch);
  const int64_t splits = row_splits(rows, Q);
  const unsigned blocks = static_cast<unsigned>(rows * splits);
  if (normalize) {
    sum_squares_kernel<T><<<blocks, kThreads, 0, stream>>>(g, part, Q, splits);
    GRADRES_RETURN_IF_LAUNCH_FAILED();
  }
  mix_fwd_split_kernel<T><<<blocks, kThreads, 0, stream>>>(f, g, x, alpha, r, part, Q, splits,
                                                           normalize, eps);
  return cudaGetLastError();
}

// ᾱ from `count` partials part[i·stride]: two stages, grids of the count only.
template <typename T>
cudaError_t alpha_bar_from(const typename Red<T>::type* part, int64_t count, int stride,
                           typename Red<T>::type* group_sums, const T* alpha, T* alpha_bar,
                           cudaStream_t stream) {
  const int64_t groups = alpha_groups(count);
  alpha_partial_kernel<T><<<static_cast<unsigned>(groups), kThreads, 0, stream>>>(
      part, count, stride, group_sums);
  GRADRES_RETURN_IF_LAUNCH_FAILED();
  alpha_bar_kernel<T><<<1, kThreads, 0, stream>>>(group_sums, groups, alpha, alpha_bar);
  return cudaGetLastError();
}

template <typename T>
cudaError_t mix_bwd(const MixBwdParams& p, void* scratch, cudaStream_t stream) {
  const T* y_bar = static_cast<const T*>(p.y_bar);
  const T* g_hat = static_cast<const T*>(p.g_hat);
  const T* x = static_cast<const T*>(p.x);
  const auto* r = static_cast<const typename Acc<T>::type*>(p.r);
  const T* alpha = static_cast<const T*>(p.alpha);
  T* g_bar = static_cast<T*>(p.g_bar);
  T* alpha_bar = static_cast<T*>(p.alpha_bar);
  T* x_bar = static_cast<T*>(p.x_bar);
  const int64_t rows = p.rows, Q = p.Q;
  const bool normalize = p.normalize, detach = p.detach;
  using R = typename Red<T>::type;
  R* part = static_cast<R*>(scratch);
  // ᾱ's group sums after the row partials (row_scratch_elems).
  R* group_sums = part + (warp_rows(rows, Q) ? rows : 2 * rows * max_splits(Q));
  if (rows == 0 || warp_rows(rows, Q)) {
    if (rows > 0) {
      mix_bwd_warp_kernel<T><<<static_cast<unsigned>(warp_row_blocks(rows)), kThreads, 0, stream>>>(
          y_bar, g_hat, x, r, alpha, g_bar, x_bar, part, rows, Q, normalize, detach);
      GRADRES_RETURN_IF_LAUNCH_FAILED();
    }
    return alpha_bar_from<T>(part, rows, 1, group_sums, alpha, alpha_bar, stream);
  }
  const int64_t splits = row_splits(rows, Q);
  const unsigned blocks = static_cast<unsigned>(rows * splits);
  mix_bwd_sums_kernel<T><<<blocks, kThreads, 0, stream>>>(y_bar, g_hat, x, alpha, x_bar, part, Q,
                                                          splits);
  GRADRES_RETURN_IF_LAUNCH_FAILED();
  if (!detach) {
    g_bar_split_kernel<T><<<blocks, kThreads, 0, stream>>>(y_bar, g_hat, r, alpha, g_bar, part,
                                                           Q, splits, normalize);
    GRADRES_RETURN_IF_LAUNCH_FAILED();
  }
  return alpha_bar_from<T>(part, rows * splits, 2, group_sums, alpha, alpha_bar, stream);
}

int64_t act_bwd_scratch_elems(int64_t rows, int64_t P, bool detach) {
  const int64_t chunks = act_bwd_chunks(rows, P), W = (detach ? 1 : 2) * P;
  return chunks == 1 ? 1 : (chunks + col_groups(chunks)) * W;
}

template <typename T>
cudaError_t act_bwd(const ActBwdParams& p, void* col_partial, cudaStream_t stream) {
  const T* z = static_cast<const T*>(p.z);
  const T* a_bar = static_cast<const T*>(p.a_bar);
  const T* d_bar = static_cast<const T*>(p.d_bar);
  const auto* s = static_cast<const typename Acc<T>::type*>(p.s);
  T* z_bar = static_cast<T*>(p.z_bar);
  T* d = static_cast<T*>(p.d);
  T* a_out = static_cast<T*>(p.a);
  T* zbar_colsum = static_cast<T*>(p.zbar_colsum);
  auto* s_bar = static_cast<typename Acc<T>::type*>(p.s_bar);
  const int64_t rows = p.rows, P = p.P;
  const Act act = p.act;
  const bool detach = p.detach;
  using Red_t = typename Red<T>::type;  // (`A` is the activation inside the dispatch below)
  if (P == 0) return cudaSuccess;
  const int64_t chunks = act_bwd_chunks(rows, P), W = (detach ? 1 : 2) * P;
  Red_t* part = static_cast<Red_t*>(col_partial);
  const dim3 grid(static_cast<unsigned>(act_bwd_col_blocks(P)), static_cast<unsigned>(chunks));
  GRADRES_DISPATCH_ACT(act, [&] {
    act_bwd_kernel<T, A><<<grid, kThreads, 0, stream>>>(z, a_bar, d_bar, s, z_bar, d, a_out, part,
                                                        zbar_colsum, s_bar, rows, P,
                                                        act_bwd_chunk_rows(rows, P), detach);
  });
  GRADRES_RETURN_IF_LAUNCH_FAILED();
  if (chunks == 1) return cudaSuccess;  // the kernel wrote the column sums
  const int64_t groups = col_groups(chunks);
  Red_t* group_part = part + chunks * W;
  const dim3 grid1(static_cast<unsigned>(col_partial_blocks_x(W)), static_cast<unsigned>(groups));
  col_partial_sum_kernel<Red_t><<<grid1, kThreads, 0, stream>>>(part, chunks, W, group_part);
  GRADRES_RETURN_IF_LAUNCH_FAILED();
  col_final_kernel<T><<<static_cast<unsigned>(col_final_blocks(W)), kThreads, 0, stream>>>(
      group_part, groups, P, W, zbar_colsum, s_bar);
  return cudaGetLastError();
}

template <typename T>
cudaError_t add_skip_grad(const AddSkipGradParams& p, cudaStream_t stream) {
  T* out = static_cast<T*>(p.out);
  const T* y_bar = static_cast<const T*>(p.y_bar);
  const T* alpha = static_cast<const T*>(p.alpha);
  const int64_t n = p.n;
  if (n == 0) return cudaSuccess;
  constexpr int V = 16 / sizeof(T);
  if (n % V == 0 && aligned16(out) && aligned16(y_bar))
    add_skip_grad_kernel<T, V><<<static_cast<unsigned>(elementwise_blocks(n / V)), kThreads, 0,
                                 stream>>>(out, y_bar, alpha, n / V);
  else
    add_skip_grad_kernel<T, 1><<<static_cast<unsigned>(elementwise_blocks(n)), kThreads, 0,
                                 stream>>>(out, y_bar, alpha, n);
  return cudaGetLastError();
}

template <typename T>
cudaError_t smap(const SmapParams& p, cudaStream_t stream) {
  using A = typename Acc<T>::type;
  if (p.C * p.H * p.W == 0) return cudaSuccess;
  const dim3 grid(static_cast<unsigned>(smap_blocks_x(p.H, p.W)), static_cast<unsigned>(p.C));
  const size_t shared = static_cast<size_t>(p.kh * p.kw) * sizeof(A);
  smap_kernel<T><<<grid, kThreads, shared, stream>>>(static_cast<const T*>(p.w2),
                                                     static_cast<A*>(p.s), p.O, p.C, p.kh, p.kw,
                                                     p.H, p.W, p.channels_last);
  return cudaGetLastError();
}

template <typename T>
cudaError_t smap_adjoint(const SmapAdjointParams& p, cudaStream_t stream) {
  using A = typename Acc<T>::type;
  if (p.C * p.kh * p.kw == 0) return cudaSuccess;
  smap_adjoint_kernel<T><<<static_cast<unsigned>(smap_adjoint_blocks(p.C, p.kh, p.kw)), kThreads, 0,
                           stream>>>(static_cast<const A*>(p.s_bar), static_cast<A*>(p.t), p.C,
                                     p.kh, p.kw, p.H, p.W, p.channels_last);
  return cudaGetLastError();
}

#define GRADRES_INSTANTIATE(T)                                                    \
  template cudaError_t act_fwd<T>(const ActFwdParams&, cudaStream_t);            \
  template cudaError_t mix_fwd<T>(const MixFwdParams&, void*, cudaStream_t);     \
  template cudaError_t mix_bwd<T>(const MixBwdParams&, void*, cudaStream_t);     \
  template cudaError_t act_bwd<T>(const ActBwdParams&, void*, cudaStream_t);     \
  template cudaError_t add_skip_grad<T>(const AddSkipGradParams&, cudaStream_t); \
  template cudaError_t smap<T>(const SmapParams&, cudaStream_t);                 \
  template cudaError_t smap_adjoint<T>(const SmapAdjointParams&, cudaStream_t);

GRADRES_INSTANTIATE(float)
GRADRES_INSTANTIATE(double)
GRADRES_INSTANTIATE(__half)
GRADRES_INSTANTIATE(__nv_bfloat16)

}  // namespace cuda
}  // namespace gradres
