// Elementwise float math for CPU kernels, written with no calls and no branches so that the
// compiler vectorises loops over it (libm's expf and tanhf are scalar calls and stop
// vectorisation). float64 uses libm: it is the exact path, not the fast one.
#pragma once
#include <bit>
#include <cmath>
#include <cstdint>
#include <limits>

#include "gmk/common.h"

// always_inline: the math must inline into the per-ISA clones of the loops that call it.
#define GMK_CPU_INLINE inline __attribute__((always_inline))

// GMK_CPU_CLONES on a (non-template) function compiles it for SSE2, AVX2 and AVX-512 and picks
// one at load time by the CPU's features (measured on an AMD EPYC here: 12x faster than SSE2 alone
// for tanh(a) * sigmoid(b)). "arch=x86-64-v3/v4" select by feature level, not by CPU model.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 12
#define GMK_CPU_CLONES __attribute__((target_clones("default", "arch=x86-64-v3", "arch=x86-64-v4")))
#else
#define GMK_CPU_CLONES
#endif

namespace gmk::cpu {

constexpr float kInf = std::numeric_limits<float>::infinity();
constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

// v = n ln2 + r with |r| <= ln2/2 and n an integer, for exp and expm1. v is clamped to [-104, 89]
// first (beyond it e^v rounds to 0 or overflows to inf all the same); NaN stays NaN.
struct ExpReduction {
  float r;
  int32_t n;
};

GMK_CPU_INLINE ExpReduction reduce_exp(float v) {
  constexpr float kLog2e = 1.44269504f, kLn2Hi = 0.693145752f, kLn2Lo = 1.42860677e-06f;
  constexpr float kRound = 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer held in the low bits
  v = v < -104.0f ? -104.0f : v;
  v = v > 89.0f ? 89.0f : v;
  const float shifted = v * kLog2e + kRound;
  const float n = shifted - kRound;
  const float r = (v - n * kLn2Hi) - n * kLn2Lo;
  return {r, std::bit_cast<int32_t>(shifted) - std::bit_cast<int32_t>(kRound)};
}

// 2^n for n in [-126, 127], put in the exponent bits.
GMK_CPU_INLINE float pow2(int32_t n) { return std::bit_cast<float>((n + 127) << 23); }

// e^r - 1 for |r| <= ln2/2 by its Taylor series to r^8 (truncation < 1e-9 relative).
GMK_CPU_INLINE float expm1_series(float r) {
  float p = 1.0f / 40320;
  p = p * r + 1.0f / 5040;
  p = p * r + 1.0f / 720;
  p = p * r + 1.0f / 120;
  p = p * r + 1.0f / 24;
  p = p * r + 1.0f / 6;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  return p * r;
}

// (1 + p) 2^n for n in [-150, 128], 2^n applied as two normal factors: below the normal range the
// product rounds to a subnormal or 0, above it overflows to inf, as e^v does.
GMK_CPU_INLINE float scale_by_pow2(float one_plus_p, int32_t n) {
  const int32_t half = n >> 1;
  return one_plus_p * pow2(half) * pow2(n - half);
}

// e^v for float, within 2 ulp: (1 + expm1_series(r)) times 2^n (reduce_exp). Subnormal where e^v is,
// 0 below, inf above 88.72; NaN stays NaN.
GMK_CPU_INLINE float exp(float v) {
  const auto [r, n] = reduce_exp(v);
  return scale_by_pow2(1.0f + expm1_series(r), n);
}
GMK_CPU_INLINE double exp(double v) { return std::exp(v); }

template <typename T>
GMK_CPU_INLINE T sigmoid(T v) {
  return T(1) / (T(1) + exp(-v));
}

// tanh for float: 2 sigmoid(2v) - 1 where |tanh v| >= 1/2 (no cancellation there), and the odd
// Taylor series to v^19 for |v| < 0.55 (truncation < 1e-9 at 0.55).
GMK_CPU_INLINE float tanh(float v) {
  const float v2 = v * v;
  float series = -443861162.0f / 1856156927625.0f;
  series = series * v2 + 6404582.0f / 10854718875.0f;
  series = series * v2 - 929569.0f / 638512875;
  series = series * v2 + 21844.0f / 6081075;
  series = series * v2 - 1382.0f / 155925;
  series = series * v2 + 62.0f / 2835;
  series = series * v2 - 17.0f / 315;
  series = series * v2 + 2.0f / 15;
  series = series * v2 - 1.0f / 3;
  series = series * v2 + 1.0f;
  series *= v;
  const float outer = 2.0f * sigmoid(2.0f * v) - 1.0f;
  return v2 < 0.3025f ? series : outer;
}
GMK_CPU_INLINE double tanh(double v) { return std::tanh(v); }

// e^v - 1 for float, within 2.1 ulp: for |v| <= 32, 2^n (e^r - 1) + (2^n - 1), exact in the second
// term and without cancellation for n != 0 (|v| > ln2/2); beyond, e^v - 1 rounds to e^v (inf above
// 88.72) or to -1. NaN stays NaN.
GMK_CPU_INLINE float expm1(float v) {
  const auto [r, n] = reduce_exp(v);
  const float p = expm1_series(r);
  const float scale = pow2(n < -64 ? -64 : (n > 64 ? 64 : n));
  const float near = scale * p + (scale - 1.0f);
  return v > 32.0f ? scale_by_pow2(1.0f + p, n) : (v < -32.0f ? -1.0f : near);
}
GMK_CPU_INLINE double expm1(double v) { return std::expm1(v); }

// log v for float, within 0.9 ulp: v = 2^e m with m in [sqrt(1/2), sqrt(2)), log(m) = f - f^2/2 +
// f^3 P(f), f = m - 1, with Cephes' logf polynomial, and e ln2 in two parts. Subnormal v are scaled
// by 2^23 first. log(0) = -inf, log(inf) = inf, NaN for v < 0 and for NaN.
GMK_CPU_INLINE float log(float v) {
  constexpr int32_t kSqrtHalfBits = 0x3f3504f3;  // sqrt(1/2)
  constexpr float kLn2Hi = 0.693359375f, kLn2Lo = -2.12194440e-4f;
  const bool subnormal = v < 1.17549435e-38f;
  const int32_t bits = std::bit_cast<int32_t>(subnormal ? v * 8388608.0f : v) - kSqrtHalfBits;
  const float e = static_cast<float>((bits >> 23) - (subnormal ? 23 : 0));
  const float f = std::bit_cast<float>((bits & 0x007fffff) + kSqrtHalfBits) - 1.0f;
  const float f2 = f * f;
  float p = 7.0376836292e-2f;
  p = p * f - 1.1514610310e-1f;
  p = p * f + 1.1676998740e-1f;
  p = p * f - 1.2420140846e-1f;
  p = p * f + 1.4249322787e-1f;
  p = p * f - 1.6668057665e-1f;
  p = p * f + 2.0000714765e-1f;
  p = p * f - 2.4999993993e-1f;
  p = p * f + 3.3333331174e-1f;
  const float log_v = (f + (f * f2 * p + e * kLn2Lo - 0.5f * f2)) + e * kLn2Hi;
  const float positive = v < kInf ? log_v : v;  // inf stays inf
  return v > 0.0f ? positive : (v == 0.0f ? -kInf : kNaN);
}
GMK_CPU_INLINE double log(double v) { return std::log(v); }

// The shared math's elementary functions (see gmk::LibMath) for CPU kernels.
struct Math {
  template <typename T>
  static GMK_CPU_INLINE T exp(T v) { return cpu::exp(v); }
  template <typename T>
  static GMK_CPU_INLINE T tanh(T v) { return cpu::tanh(v); }
  template <typename T>
  static GMK_CPU_INLINE T expm1(T v) { return cpu::expm1(v); }
  template <typename T>
  static GMK_CPU_INLINE T log(T v) { return cpu::log(v); }
};

}  // namespace gmk::cpu
