// CUDA kernels for the fused stages (see epilogues.cuh). Torch-free: compiled by `nvcc -c` in CI.
//
// Reductions are deterministic: per-row or per-chunk partials written to scratch, then summed in a
// fixed order by a second kernel — no float atomics, so results are bitwise reproducible.
#include "epilogues.cuh"

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>

namespace gradres {
namespace cuda {
namespace {

template <typename T> struct Acc { using type = float; };
template <> struct Acc<double> { using type = double; };

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

// ---- row reductions (mix_fwd, mix_bwd): one group of G threads per row -------------------------
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

// The row `n` and the lane `t` within it of this thread, for a group of G threads per row:
// G = 32, a warp per row (blockDim.x / 32 rows per block); G = blockDim.x, a block per row.
template <int G>
struct RowGroup {
  int64_t n;
  int t;
  __device__ RowGroup()
      : n(int64_t(blockIdx.x) * (blockDim.x / G) + threadIdx.x / G), t(threadIdx.x % G) {}
};

template <typename T, int G>
__global__ void mix_fwd_kernel(T* __restrict__ f, T* __restrict__ g, const T* __restrict__ x,
                               const T* __restrict__ alpha, T* __restrict__ r, int64_t rows,
                               int64_t Q, bool normalize, double eps) {
  using A = typename Acc<T>::type;
  __shared__ A shared[kThreads / 32];
  const RowGroup<G> row;
  const int64_t n = row.n;
  const int t = row.t;
  const A m = mix_weight(alpha);
  if (G > 32 && n >= rows) return;  // block-wide groups: whole block exits together
  A scale = A(1);
  if (normalize) {
    A ss = A(0);
    if (n < rows)
      for (int64_t q = t; q < Q; q += G) { const A v = to_acc(g[n * Q + q]); ss += v * v; }
    ss = group_sum<A, G>(ss, shared);
    if (n >= rows) return;
    const A rr = sqrt(ss + A(eps) * A(eps));
    if (t == 0) r[n] = from_acc<T>(rr);
    scale = A(1) / rr;
  }
  if (n >= rows) return;
  for (int64_t q = t; q < Q; q += G) {
    const int64_t i = n * Q + q;
    const A gh = to_acc(g[i]) * scale;
    g[i] = from_acc<T>(gh);
    f[i] = from_acc<T>(to_acc(f[i]) + (A(1) - m) * to_acc(x[i]) + m * gh);
  }
}

template <typename T, int G>
__global__ void mix_bwd_kernel(const T* __restrict__ y_bar, const T* __restrict__ g_hat,
                               const T* __restrict__ x, const T* __restrict__ r,
                               const T* __restrict__ alpha, T* __restrict__ g_bar,
                               T* __restrict__ x_copy, T* __restrict__ x_bar,
                               typename Acc<T>::type* __restrict__ row_part,
                               int64_t rows, int64_t Q, bool normalize, bool detach) {
  using A = typename Acc<T>::type;
  __shared__ A shared[kThreads / 32];
  const RowGroup<G> row;
  const int64_t n = row.n;
  const int t = row.t;
  const A m = mix_weight(alpha);
  if (G > 32 && n >= rows) return;
  A part = A(0), dot = A(0);
  if (n < rows)
    for (int64_t q = t; q < Q; q += G) {
      const int64_t i = n * Q + q;
      const A y = to_acc(y_bar[i]), gh = to_acc(g_hat[i]);
      part += y * (gh - to_acc(x[i]));
      dot += gh * y;
      if (x_bar) x_bar[i] = from_acc<T>(to_acc(x_bar[i]) + (A(1) - m) * y);
    }
  part = group_sum<A, G>(part, shared);
  dot = group_sum<A, G>(dot, shared);
  if (n >= rows) return;
  if (t == 0) row_part[n] = part;
  if (detach) return;
  const A inv_r = normalize ? A(1) / to_acc(r[n]) : A(1);
  for (int64_t q = t; q < Q; q += G) {
    const int64_t i = n * Q + q;
    const A y = to_acc(y_bar[i]);
    const A gb = normalize ? m * (y - to_acc(g_hat[i]) * dot) * inv_r : m * y;
    g_bar[i] = from_acc<T>(gb);
    x_copy[i] = x[i];
  }
}

// Sums `count` partials in a fixed order (one block), scaling by m(1−m): ᾱ.
template <typename T>
__global__ void alpha_bar_kernel(const typename Acc<T>::type* __restrict__ part, int64_t count,
                                 const T* __restrict__ alpha, T* __restrict__ alpha_bar) {
  using A = typename Acc<T>::type;
  __shared__ A shared[kThreads / 32];
  A s = A(0);
  for (int64_t i = threadIdx.x; i < count; i += blockDim.x) s += part[i];
  s = group_sum<A, kThreads>(s, shared);
  if (threadIdx.x == 0) {
    const A m = mix_weight(alpha);
    alpha_bar[0] = from_acc<T>(m * (A(1) - m) * s);
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
                               T* __restrict__ z_bar, T* __restrict__ d,
                               typename Acc<T>::type* __restrict__ col_part, int64_t rows,
                               int64_t P, int64_t chunk_rows, bool detach) {
  using Ops = ActOps<A_>;
  using A = typename Acc<T>::type;
  const int64_t p = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t chunk = blockIdx.y;
  if (p >= P) return;
  const A sv = to_acc(s[p]);
  A zs = A(0), ss = A(0);
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
    z_bar[i] = from_acc<T>(zb);
    zs += zb;
  }
  const int64_t chunks = gridDim.y;
  col_part[chunk * P + p] = zs;
  if (!detach) col_part[(chunks + chunk) * P + p] = ss;
}

template <typename T>
__global__ void col_sum_kernel(const typename Acc<T>::type* __restrict__ col_part, int64_t chunks,
                               int64_t P, T* __restrict__ zbar_colsum, T* __restrict__ s_bar,
                               bool detach) {
  using A = typename Acc<T>::type;
  for (int64_t p = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; p < P;
       p += int64_t(gridDim.x) * blockDim.x) {
    A zs = A(0), ss = A(0);
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

// Rows of at most this width get a warp each; wider rows a 256-thread block each.
constexpr int64_t kWarpRowMax = 2048;

// Launches the warp-per-row or the block-per-row instance of a row kernel over `rows` rows.
template <typename WarpKernel, typename BlockKernel, typename... Args>
void launch_rows(WarpKernel warp_kernel, BlockKernel block_kernel, int64_t rows, int64_t Q,
                 cudaStream_t stream, Args... args) {
  if (rows == 0) return;
  if (Q <= kWarpRowMax) {
    const int64_t per_block = kThreads / 32;
    warp_kernel<<<static_cast<unsigned>((rows + per_block - 1) / per_block), kThreads, 0,
                  stream>>>(args...);
  } else {
    block_kernel<<<static_cast<unsigned>(rows), kThreads, 0, stream>>>(args...);
  }
}

}  // namespace

template <typename T>
void act_fwd(const T* z, const T* s, T* a, T* d, int64_t rows, int64_t P, Act act,
             cudaStream_t stream) {
  const int64_t n = rows * P;
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
void mix_fwd(T* f, T* g, const T* x, const T* alpha, T* r, int64_t rows, int64_t Q,
             bool normalize, double eps, cudaStream_t stream) {
  launch_rows(mix_fwd_kernel<T, 32>, mix_fwd_kernel<T, kThreads>, rows, Q, stream, f, g, x, alpha,
              r, rows, Q, normalize, eps);
}

template <typename T>
void mix_bwd(const T* y_bar, const T* g_hat, const T* x, const T* r, const T* alpha, T* g_bar,
             T* x_copy, T* alpha_bar, T* x_bar, void* row_partial, int64_t rows, int64_t Q,
             bool normalize, bool detach, cudaStream_t stream) {
  using A = typename Acc<T>::type;
  A* part = static_cast<A*>(row_partial);
  launch_rows(mix_bwd_kernel<T, 32>, mix_bwd_kernel<T, kThreads>, rows, Q, stream, y_bar, g_hat, x,
              r, alpha, g_bar, x_copy, x_bar, part, rows, Q, normalize, detach);
  alpha_bar_kernel<T><<<1, kThreads, 0, stream>>>(part, rows, alpha, alpha_bar);
}

int64_t act_bwd_scratch_elems(int64_t rows, int64_t P, bool detach) {
  return num_chunks(rows) * P * (detach ? 1 : 2);
}

template <typename T>
void act_bwd(const T* z, const T* a_bar, const T* d_bar, const T* s, T* z_bar, T* d,
             T* zbar_colsum, T* s_bar, void* col_partial, int64_t rows, int64_t P, Act act,
             bool detach, cudaStream_t stream) {
  using Acc_t = typename Acc<T>::type;  // (`A` is the activation inside the dispatch below)
  if (P == 0) return;
  const int64_t chunks = num_chunks(rows);
  Acc_t* part = static_cast<Acc_t*>(col_partial);
  // Narrow rows (MLP, P = H) get narrower blocks so few threads idle.
  const int threads = static_cast<int>(std::min<int64_t>(kThreads, (P + 31) / 32 * 32));
  const dim3 grid(static_cast<unsigned>((P + threads - 1) / threads), static_cast<unsigned>(chunks));
  GRADRES_DISPATCH_ACT(act, [&] {
    act_bwd_kernel<T, A><<<grid, threads, 0, stream>>>(z, a_bar, d_bar, s, z_bar, d, part,
                                                       rows, P, rows_per_chunk(rows), detach);
  });
  col_sum_kernel<T><<<blocks_for(P), kThreads, 0, stream>>>(part, chunks, P, zbar_colsum, s_bar,
                                                            detach);
}

template <typename T>
void add_skip_grad(T* out, const T* y_bar, const T* alpha, int64_t n, cudaStream_t stream) {
  if (n == 0) return;
  constexpr int V = 16 / sizeof(T);
  if (n % V == 0 && aligned16(out) && aligned16(y_bar))
    add_skip_grad_kernel<T, V><<<blocks_for(n / V), kThreads, 0, stream>>>(out, y_bar, alpha, n / V);
  else
    add_skip_grad_kernel<T, 1><<<blocks_for(n), kThreads, 0, stream>>>(out, y_bar, alpha, n);
}

#define GRADRES_INSTANTIATE(T)                                                                   \
  template void act_fwd<T>(const T*, const T*, T*, T*, int64_t, int64_t, Act, cudaStream_t);   \
  template void mix_fwd<T>(T*, T*, const T*, const T*, T*, int64_t, int64_t, bool, double,     \
                           cudaStream_t);                                                      \
  template void mix_bwd<T>(const T*, const T*, const T*, const T*, const T*, T*, T*, T*, T*,    \
                           void*, int64_t, int64_t, bool, bool, cudaStream_t);                 \
  template void act_bwd<T>(const T*, const T*, const T*, const T*, T*, T*, T*, T*, void*,      \
                           int64_t, int64_t, Act, bool, cudaStream_t);                         \
  template void add_skip_grad<T>(T*, const T*, const T*, int64_t, cudaStream_t);

GRADRES_INSTANTIATE(float)
GRADRES_INSTANTIATE(double)
GRADRES_INSTANTIATE(__half)
GRADRES_INSTANTIATE(__nv_bfloat16)

}  // namespace cuda
}  // namespace gradres
