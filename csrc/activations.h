// The activation table in C++: φ, φ', φ'' for the fused kernels (CPU and CUDA alike).
//
// These are the closed forms of gradres_fused/activations.py (the table's source of truth, whose
// entries are tested against autograd); tests/test_cpp.py checks this header against that table
// through the ops. Torch-free so that nvcc compiles it on machines without a GPU.
#pragma once

#include <cmath>

// The transcendental functions the table calls: CUDA's on the device; on the CPU, for float32,
// the vectorizable polynomials of cpu_math.h (libm's calls would keep the stages' loops scalar).
#if defined(__CUDACC__)
namespace gradres {
namespace act_math {
using ::cos;
using ::erf;
using ::exp;
using ::sin;
using ::tanh;
}  // namespace act_math
}  // namespace gradres
#else
#include "cpu_math.h"
namespace gradres {
namespace act_math = cpu_math;
}
#endif

#if defined(__CUDACC__)
#define GRADRES_HD __host__ __device__ __forceinline__
#else
#define GRADRES_HD inline
#endif

namespace gradres {

enum class Act : int { Relu = 0, Gelu = 1, GeluTanh = 2, Silu = 3, Tanh = 4, Sin = 5 };

// Order in which gradres_fused/activations.py lists them; ops take the name and map it here.
constexpr const char* kActNames[] = {"relu", "gelu", "gelu_tanh", "silu", "tanh", "sin"};
constexpr int kNumActs = 6;

template <Act A>
struct ActOps;

// kSavesOutput: whether the block keeps a = φ(z) for its backward instead of z. For relu,
// d1(φ(z)) = d1(z) bit for bit (φ(z) > 0 exactly where z > 0; NaN stays NaN) and φ'' = 0, so the
// backward reads φ', φ'' off a (which the W̄2 GEMM reads anyway) with the same functions. Every
// other activation keeps z, and the backward recomputes a = φ(z) in its pass over z (act_bwd).

// relu: φ'' = 0, so kernels skip the second-order z̄ term (kD2IsZero).
template <>
struct ActOps<Act::Relu> {
  static constexpr bool kD2IsZero = true;
  static constexpr bool kSavesOutput = true;
  // z < 0 ? 0 : z keeps NaN (like torch.relu); φ' = 0 only where z ≤ 0, so φ'(NaN) = 1 — the
  // convention of torch's relu backward (threshold_backward), which the reference uses.
  template <typename T> static GRADRES_HD T f(T z) { return z < T(0) ? T(0) : z; }
  template <typename T> static GRADRES_HD T d1(T z) { return z <= T(0) ? T(0) : T(1); }
  template <typename T> static GRADRES_HD T d2(T) { return T(0); }
};

// gelu (erf): φ = zΦ(z); φ' = Φ + zϕ; φ'' = ϕ(2 − z²).
template <>
struct ActOps<Act::Gelu> {
  static constexpr bool kD2IsZero = false;
  static constexpr bool kSavesOutput = false;
  template <typename T> static GRADRES_HD T cdf(T z) {
    return T(0.5) * (T(1) + act_math::erf(z * T(0.70710678118654752440)));
  }
  template <typename T> static GRADRES_HD T pdf(T z) {
    return act_math::exp(T(-0.5) * z * z) * T(0.39894228040143267794);
  }
  template <typename T> static GRADRES_HD T f(T z) { return z * cdf(z); }
  template <typename T> static GRADRES_HD T d1(T z) { return cdf(z) + z * pdf(z); }
  template <typename T> static GRADRES_HD T d2(T z) { return pdf(z) * (T(2) - z * z); }
};

// gelu (tanh approximation): T = tanh(u), u = c(z + k z³), S = 1 − T².
template <>
struct ActOps<Act::GeluTanh> {
  static constexpr bool kD2IsZero = false;
  static constexpr bool kSavesOutput = false;
  static constexpr double kC = 0.79788456080286535588;  // sqrt(2/π)
  static constexpr double kK = 0.044715;
  template <typename T> static GRADRES_HD T th(T z) { return act_math::tanh(T(kC) * (z + T(kK) * z * z * z)); }
  template <typename T> static GRADRES_HD T f(T z) { return T(0.5) * z * (T(1) + th(z)); }
  template <typename T> static GRADRES_HD T d1(T z) {
    T t = th(z), s = T(1) - t * t, u1 = T(kC) * (T(1) + T(3 * kK) * z * z);
    return T(0.5) * (T(1) + t) + T(0.5) * z * s * u1;
  }
  template <typename T> static GRADRES_HD T d2(T z) {
    T t = th(z), s = T(1) - t * t, u1 = T(kC) * (T(1) + T(3 * kK) * z * z);
    T u2 = T(6 * kC * kK) * z;
    return s * u1 - z * t * s * u1 * u1 + T(0.5) * z * s * u2;
  }
};

// silu: φ = zσ; φ' = σ(1 + z(1 − σ)); φ'' = σ(1 − σ)(2 + z(1 − 2σ)).
template <>
struct ActOps<Act::Silu> {
  static constexpr bool kD2IsZero = false;
  static constexpr bool kSavesOutput = false;
  template <typename T> static GRADRES_HD T sig(T z) { return T(1) / (T(1) + act_math::exp(-z)); }
  template <typename T> static GRADRES_HD T f(T z) { return z * sig(z); }
  template <typename T> static GRADRES_HD T d1(T z) { T s = sig(z); return s * (T(1) + z * (T(1) - s)); }
  template <typename T> static GRADRES_HD T d2(T z) {
    T s = sig(z);
    return s * (T(1) - s) * (T(2) + z * (T(1) - T(2) * s));
  }
};

// tanh: φ' = 1 − t²; φ'' = −2t(1 − t²).
template <>
struct ActOps<Act::Tanh> {
  static constexpr bool kD2IsZero = false;
  static constexpr bool kSavesOutput = false;
  template <typename T> static GRADRES_HD T f(T z) { return act_math::tanh(z); }
  template <typename T> static GRADRES_HD T d1(T z) { T t = act_math::tanh(z); return T(1) - t * t; }
  template <typename T> static GRADRES_HD T d2(T z) { T t = act_math::tanh(z); return T(-2) * t * (T(1) - t * t); }
};

// sin: φ' = cos; φ'' = −sin.
template <>
struct ActOps<Act::Sin> {
  static constexpr bool kD2IsZero = false;
  static constexpr bool kSavesOutput = false;
  template <typename T> static GRADRES_HD T f(T z) { return act_math::sin(z); }
  template <typename T> static GRADRES_HD T d1(T z) { return act_math::cos(z); }
  template <typename T> static GRADRES_HD T d2(T z) { return -act_math::sin(z); }
};

}  // namespace gradres

// Runs the statements with `A` bound to the compile-time activation for runtime value `act`.
#define GRADRES_DISPATCH_ACT(act, ...)                                              \
  [&] {                                                                             \
    switch (act) {                                                                  \
      case ::gradres::Act::Relu: { constexpr auto A = ::gradres::Act::Relu; return __VA_ARGS__(); } \
      case ::gradres::Act::Gelu: { constexpr auto A = ::gradres::Act::Gelu; return __VA_ARGS__(); } \
      case ::gradres::Act::GeluTanh: { constexpr auto A = ::gradres::Act::GeluTanh; return __VA_ARGS__(); } \
      case ::gradres::Act::Silu: { constexpr auto A = ::gradres::Act::Silu; return __VA_ARGS__(); } \
      case ::gradres::Act::Tanh: { constexpr auto A = ::gradres::Act::Tanh; return __VA_ARGS__(); } \
      default: { constexpr auto A = ::gradres::Act::Sin; return __VA_ARGS__(); }   \
    }                                                                               \
  }()

namespace gradres {
// ActOps<act>::kSavesOutput for a runtime activation.
inline bool act_saves_output(Act act) {
  return GRADRES_DISPATCH_ACT(act, [&] { return ActOps<A>::kSavesOutput; });
}
}  // namespace gradres
