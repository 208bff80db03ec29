// CUDA kernels for the fused stages (see stages.cuh). Torch-free: compiled by `nvcc -c` in CI.
//
// Reductions are deterministic: per-row or per-chunk partials written to scratch, then summed in a
// fixed order by a second kernel — no float atomics, so results are bitwise reproducible.
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

constexpr int kThreads = 256;

int blocks_for(int64_t n, int threads = kThreads) {
  return static_cast<int>(std::min<int64_t>((n + threads - 1) / threads, 65535 * 8));
}

// 16-byte vector of T for aligned loads/stores.
template <typename T, int N> struct alignas(sizeof(T) * N) Vec { T v[N]; };

bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

// ---- act_fwd ----------------------------------------------------------------------------------
template <typename T, Act A, int V>
__global__ void act_fwd_kernel(const T* __restrict__ z, const T* __restrict__ s, T* __restrict__ a,
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
      dv.v[k] = from_acc<T>(Ops::d1(v) * to_acc(s[p0 + k]));
    }
    *reinterpret_cast<Vec<T, V>*>(a + base) = av;
    *reinterpret_cast<Vec<T, V>*>(d + base) = dv;
  }
}

// ---- row reductions (mix_fwd, mix_bwd) ---------------------------------------------------------
// Narrow rows (Q ≤ kWarpRowMax, the MLP) get a warp each and run in one pass. Wide rows (conv: a
// row is a whole sample) are split into `splits` segments, one 256-thread block each, so a small
// batch still fills the device: a first pass writes each segment's partial sums, a second pass
// adds a row's partials in a fixed order (every block of the row alike) and does the elementwise
// part. No atomics, so results do not depend on scheduling.
constexpr int64_t kWarpRowMax = 2048;
constexpr int64_t kMinSegment = 2048;  // elements per block at least (8 per thread)
constexpr int64_t kMaxSplits = 64;

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

// ᾱ = m(1−m)·Σ part[i·stride] over i < count, summed in a fixed order by one block.
template <typename T>
__global__ void alpha_bar_kernel(const typename Red<T>::type* __restrict__ part, int64_t count,
                                 int stride, const T* __restrict__ alpha, T* __restrict__ alpha_bar) {
  using R = typename Red<T>::type;
  __shared__ R shared[kThreads / 32];
  R s = R(0);
  for (int64_t i = threadIdx.x; i < count; i += blockDim.x) s += part[i * stride];
  s = group_sum<R, kThreads>(s, shared);
  if (threadIdx.x == 0) {
    const R m = mix_weight(alpha);
    alpha_bar[0] = from_acc<T>(m * (R(1) - m) * s);
  }
}

// ---- act_bwd: elementwise + column partial sums over a chunk of rows ----------------------------
// A chunk is at least 64 rows, more when needed to keep gridDim.y ≤ 65535.
int64_t rows_per_chunk(int64_t rows) { return std::max<int64_t>(64, (rows + 65534) / 65535); }
int64_t num_chunks(int64_t rows) {
  return std::max<int64_t>(1, (rows + rows_per_chunk(rows) - 1) / rows_per_chunk(rows));
}

template <typename T, Act A_>
__global__ void act_bwd_kernel(const T* __restrict__ z, const T* __restrict__ a_bar,
                               const T* __restrict__ d_bar, const T* __restrict__ s,
                               T* __restrict__ z_bar, T* __restrict__ d, T* __restrict__ a,
                               typename Red<T>::type* __restrict__ col_part, int64_t rows,
                               int64_t P, int64_t chunk_rows, bool detach) {
  using Ops = ActOps<A_>;
  using A = typename Acc<T>::type;
  using R = typename Red<T>::type;
  const int64_t p = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t chunk = blockIdx.y;
  if (p >= P) return;
  const A sv = detach ? A(0) : to_acc(s[p]);  // s is read only in second order
  R zs = R(0), ss = R(0);
  const int64_t n_end = (chunk + 1) * chunk_rows < rows ? (chunk + 1) * chunk_rows : rows;
  for (int64_t n = chunk * chunk_rows; n < n_end; ++n) {
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
  const int64_t chunks = gridDim.y;
  col_part[chunk * P + p] = zs;
  if (!detach) col_part[(chunks + chunk) * P + p] = ss;
}

template <typename T>
__global__ void col_sum_kernel(const typename Red<T>::type* __restrict__ col_part, int64_t chunks,
                               int64_t P, T* __restrict__ zbar_colsum, T* __restrict__ s_bar,
                               bool detach) {
  using R = typename Red<T>::type;
  for (int64_t p = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; p < P;
       p += int64_t(gridDim.x) * blockDim.x) {
    R zs = R(0), ss = R(0);
    for (int64_t c = 0; c < chunks; ++c) {
      zs += col_part[c * P + p];
      if (!detach) ss += col_part[(chunks + c) * P + p];
    }
    zbar_colsum[p] = from_acc<T>(zs);
    if (!detach) s_bar[p] = from_acc<T>(ss);
  }
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

// Segments per wide row: enough blocks for about four per SM, none shorter than kMinSegment.
int64_t max_splits(int64_t Q) {
  return std::min<int64_t>(kMaxSplits, std::max<int64_t>(1, Q / kMinSegment));
}
int64_t splits_for(int64_t rows, int64_t Q) {
  int device = 0, sms = 1;
  cudaGetDevice(&device);
  cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
  const int64_t want = (4 * int64_t(sms) + rows - 1) / rows;
  return std::max<int64_t>(1, std::min(want, max_splits(Q)));
}

unsigned warp_row_blocks(int64_t rows) {
  const int64_t per_block = kThreads / 32;
  return static_cast<unsigned>((rows + per_block - 1) / per_block);
}

}  // namespace

int64_t row_scratch_elems(int64_t rows, int64_t Q) {
  return Q <= kWarpRowMax ? rows : 2 * rows * max_splits(Q);
}

template <typename T>
void act_fwd(const ActFwdParams& p, cudaStream_t stream) {
  const T* z = static_cast<const T*>(p.z);
  const T* s = static_cast<const T*>(p.s);
  T* a = static_cast<T*>(p.a);
  T* d = static_cast<T*>(p.d);
  const int64_t P = p.P, n = p.rows * p.P;
  const Act act = p.act;
  if (n == 0) return;
  constexpr int V = 16 / sizeof(T);
  const bool vec = P % V == 0 && aligned16(z) && aligned16(a) && aligned16(d);
  GRADRES_DISPATCH_ACT(act, [&] {
    if (vec)
      act_fwd_kernel<T, A, V><<<blocks_for(n / V), kThreads, 0, stream>>>(z, s, a, d, n / V, P);
    else
      act_fwd_kernel<T, A, 1><<<blocks_for(n), kThreads, 0, stream>>>(z, s, a, d, n, P);
  });
}

template <typename T>
void mix_fwd(const MixFwdParams& p, void* scratch, cudaStream_t stream) {
  T* f = static_cast<T*>(p.f);
  T* g = static_cast<T*>(p.g);
  const T* x = static_cast<const T*>(p.x);
  const T* alpha = static_cast<const T*>(p.alpha);
  auto* r = static_cast<typename Acc<T>::type*>(p.r);
  const int64_t rows = p.rows, Q = p.Q;
  const bool normalize = p.normalize;
  const double eps = p.eps;
  if (rows == 0) return;
  if (Q <= kWarpRowMax) {
    mix_fwd_warp_kernel<T><<<warp_row_blocks(rows), kThreads, 0, stream>>>(f, g, x, alpha, r, rows,
                                                                           Q, normalize, eps);
    return;
  }
  using R = typename Red<T>::type;
  R* part = static_cast<R*>(scratch);
  const int64_t splits = splits_for(rows, Q);
  const unsigned blocks = static_cast<unsigned>(rows * splits);
  if (normalize) sum_squares_kernel<T><<<blocks, kThreads, 0, stream>>>(g, part, Q, splits);
  mix_fwd_split_kernel<T><<<blocks, kThreads, 0, stream>>>(f, g, x, alpha, r, part, Q, splits,
                                                           normalize, eps);
}

template <typename T>
void mix_bwd(const MixBwdParams& p, void* scratch, cudaStream_t stream) {
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
  if (rows == 0 || Q <= kWarpRowMax) {
    if (rows > 0)
      mix_bwd_warp_kernel<T><<<warp_row_blocks(rows), kThreads, 0, stream>>>(
          y_bar, g_hat, x, r, alpha, g_bar, x_bar, part, rows, Q, normalize, detach);
    alpha_bar_kernel<T><<<1, kThreads, 0, stream>>>(part, rows, 1, alpha, alpha_bar);
    return;
  }
  const int64_t splits = splits_for(rows, Q);
  const unsigned blocks = static_cast<unsigned>(rows * splits);
  mix_bwd_sums_kernel<T><<<blocks, kThreads, 0, stream>>>(y_bar, g_hat, x, alpha, x_bar, part, Q,
                                                          splits);
  if (!detach)
    g_bar_split_kernel<T><<<blocks, kThreads, 0, stream>>>(y_bar, g_hat, r, alpha, g_bar, part,
                                                           Q, splits, normalize);
  alpha_bar_kernel<T><<<1, kThreads, 0, stream>>>(part, rows * splits, 2, alpha, alpha_bar);
}

int64_t act_bwd_scratch_elems(int64_t rows, int64_t P, bool detach) {
  return num_chunks(rows) * P * (detach ? 1 : 2);
}

template <typename T>
void act_bwd(const ActBwdParams& p, void* col_partial, cudaStream_t stream) {
  const T* z = static_cast<const T*>(p.z);
  const T* a_bar = static_cast<const T*>(p.a_bar);
  const T* d_bar = static_cast<const T*>(p.d_bar);
  const T* s = static_cast<const T*>(p.s);
  T* z_bar = static_cast<T*>(p.z_bar);
  T* d = static_cast<T*>(p.d);
  T* a_out = static_cast<T*>(p.a);
  T* zbar_colsum = static_cast<T*>(p.zbar_colsum);
  T* s_bar = static_cast<T*>(p.s_bar);
  const int64_t rows = p.rows, P = p.P;
  const Act act = p.act;
  const bool detach = p.detach;
  using Red_t = typename Red<T>::type;  // (`A` is the activation inside the dispatch below)
  if (P == 0) return;
  const int64_t chunks = num_chunks(rows);
  Red_t* part = static_cast<Red_t*>(col_partial);
  // Narrow rows (MLP, P = H) get narrower blocks so few threads idle.
  const int threads = static_cast<int>(std::min<int64_t>(kThreads, (P + 31) / 32 * 32));
  const dim3 grid(static_cast<unsigned>((P + threads - 1) / threads), static_cast<unsigned>(chunks));
  GRADRES_DISPATCH_ACT(act, [&] {
    act_bwd_kernel<T, A><<<grid, threads, 0, stream>>>(z, a_bar, d_bar, s, z_bar, d, a_out, part,
                                                       rows, P, rows_per_chunk(rows), detach);
  });
  col_sum_kernel<T><<<blocks_for(P), kThreads, 0, stream>>>(part, chunks, P, zbar_colsum, s_bar,
                                                            detach);
}

template <typename T>
void add_skip_grad(const AddSkipGradParams& p, cudaStream_t stream) {
  T* out = static_cast<T*>(p.out);
  const T* y_bar = static_cast<const T*>(p.y_bar);
  const T* alpha = static_cast<const T*>(p.alpha);
  const int64_t n = p.n;
  if (n == 0) return;
  constexpr int V = 16 / sizeof(T);
  if (n % V == 0 && aligned16(out) && aligned16(y_bar))
    add_skip_grad_kernel<T, V><<<blocks_for(n / V), kThreads, 0, stream>>>(out, y_bar, alpha, n / V);
  else
    add_skip_grad_kernel<T, 1><<<blocks_for(n), kThreads, 0, stream>>>(out, y_bar, alpha, n);
}

#define GRADRES_INSTANTIATE(T)                                                  \
  template void act_fwd<T>(const ActFwdParams&, cudaStream_t);                \
  template void mix_fwd<T>(const MixFwdParams&, void*, cudaStream_t);         \
  template void mix_bwd<T>(const MixBwdParams&, void*, cudaStream_t);         \
  template void act_bwd<T>(const ActBwdParams&, void*, cudaStream_t);         \
  template void add_skip_grad<T>(const AddSkipGradParams&, cudaStream_t);

GRADRES_INSTANTIATE(float)
GRADRES_INSTANTIATE(double)
GRADRES_INSTANTIATE(__half)
GRADRES_INSTANTIATE(__nv_bfloat16)

}  // namespace cuda
}  // namespace gradres
