// Vectorizable float32 exp / tanh / erf for the CPU stages.
//
// libm's expf/tanhf/erff are opaque calls that keep `#pragma omp simd` loops scalar (glibc's
// vector variants are declared only under -ffast-math), which made the silu/gelu/tanh stages
// compute-bound at one element per call. These are branch-free inline polynomials (compares
// become blends), so the compiler vectorizes every loop that calls them at the ISA the loop is
// compiled for (stages_cpu_kernels.h). Accuracy: exp and tanh within 2 ulp of the correctly
// rounded result over their whole range (Cephes' minimax polynomials); erf within 3 ulp (below
// |x| = 1, where it is small) and 1e-7 absolute above.
// NaN propagates through every function; ±inf give the limits.
//
// Float64 keeps libm (its users are gradcheck and accuracy studies, not throughput). Torch-free.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

namespace gradres {
namespace cpu_math {

inline float bits_to_float(uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}
inline uint32_t float_to_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return u;
}

// e^x = 2^n · e^r, n = round(x / ln 2), |r| ≤ ln2 / 2 (Cody–Waite split of ln 2), e^r by Cephes'
// expf polynomial; 2^n is built from its exponent bits (as 2^(n−1)·2 for x > 0, so n = 128 still
// reaches FLT_MAX). Below -87.34 (e^x < FLT_MIN) the result is 0 — subnormals flush — and above
// ln FLT_MAX it is +inf. (The limits are selected after the polynomial, not by clamping x alone:
// the compiler folds a clamped x through the caller's arithmetic as constants — silu's z·σ(z)
// became z·4e-39 on every element — and subnormal products cost a microcode assist each, 7×
// slower.)
inline float exp(float x) {
  constexpr float lo = -87.336544f, hi = 88.72283f;
  const float xc = x < lo ? lo : (x > hi ? hi : x);  // the compares keep NaN
  // n = round(x·log2 e) by the 1.5·2²³ shifter: exact in round-to-nearest, no float→int call.
  const float shifter = 12582912.0f;
  const float t = xc * 1.44269504088896341f + shifter;
  const float n = t - shifter;
  const float r = (xc - n * 0.693359375f) - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * (r * r) + r + 1.0f;
  // n from the shifter's low mantissa bits: bits(t) − bits(shifter) = n (two's complement).
  const uint32_t n_bits = float_to_bits(t) - float_to_bits(shifter);
  const bool high = x > 0.0f;
  const float scale = bits_to_float((n_bits + (high ? 126u : 127u)) << 23);
  const float e = (p * scale) * (high ? 2.0f : 1.0f);
  return x < lo ? 0.0f : (x > hi ? HUGE_VALF : e);
}

// tanh: odd polynomial below 0.625 (where 1 − 2/(e^{2x}+1) would cancel), else from exp.
inline float tanh(float x) {
  const float ax = x < 0.0f ? -x : x;
  const float z = x * x;
  float small = -5.70498872745e-3f;
  small = small * z + 2.06390887954e-2f;
  small = small * z - 5.37397155531e-2f;
  small = small * z + 1.33314422036e-1f;
  small = small * z - 3.33332819422e-1f;
  small = small * z * x + x;
  float large = 1.0f - 2.0f / (exp(2.0f * ax) + 1.0f);
  large = x < 0.0f ? -large : large;
  return ax < 0.625f ? small : (x != x ? x : large);
}

// erf: below |x| = 1 Cephes' odd polynomial x·P(x²) (relative accuracy where erf is small);
// above, 1 − erfc(|x|) with sign(x), erfc by Numerical Recipes' erfcc (Chebyshev fit,
// fractional error < 1.2e-7 everywhere).
inline float erf(float x) {
  const float ax = x < 0.0f ? -x : x;
  const float z = x * x;
  float small = 7.853861353153693e-5f;
  small = small * z - 8.010193625184903e-4f;
  small = small * z + 5.188327685732524e-3f;
  small = small * z - 2.685381193529856e-2f;
  small = small * z + 1.128358514861418e-1f;
  small = small * z - 3.761262582423300e-1f;
  small = small * z + 1.128379165726710f;
  small = small * x;
  const float t = 1.0f / (1.0f + 0.5f * ax);
  float poly = 0.17087277f;
  poly = poly * t - 0.82215223f;
  poly = poly * t + 1.48851587f;
  poly = poly * t - 1.13520398f;
  poly = poly * t + 0.27886807f;
  poly = poly * t - 0.18628806f;
  poly = poly * t + 0.09678418f;
  poly = poly * t + 0.37409196f;
  poly = poly * t + 1.00002368f;
  poly = poly * t - 1.26551223f;
  const float e = 1.0f - t * exp(poly - z);
  return ax < 1.0f ? small : (x < 0.0f ? -e : e);
}

// sin and cos stay libm's (a vector version needs a range reduction exact for large arguments).
inline float sin(float x) { return std::sin(x); }
inline float cos(float x) { return std::cos(x); }

inline double exp(double x) { return std::exp(x); }
inline double tanh(double x) { return std::tanh(x); }
inline double erf(double x) { return std::erf(x); }
inline double sin(double x) { return std::sin(x); }
inline double cos(double x) { return std::cos(x); }

}  // namespace cpu_math
}  // namespace gradres
