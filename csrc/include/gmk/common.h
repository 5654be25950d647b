// Definitions shared by every family's CPU and CUDA code. No torch header: .cu files include this.
#pragma once
#include <cmath>
#include <cstdint>

// always_inline on the host too: CPU kernels call the shared math from loops compiled once per
// instruction set (GMK_CPU_CLONES in gmk/cpu_math.h), which only vectorise what is inlined.
#if defined(__CUDACC__)
#define GMK_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define GMK_HOST_DEVICE inline __attribute__((always_inline))
#endif

namespace gmk {

// Element types the kernels take; the ops map at::ScalarType onto these.
enum class DType : int { Float32, Float16, BFloat16, Float64 };

// A tensor seen as (outer, channels, inner): sizes live in the op's argument struct, strides here.
struct Strides3 {
  int64_t outer = 0, channel = 0, inner = 0;
};

// The elementary functions the shared math is written on: libm on the host, CUDA's on the device.
// CPU kernels pass gmk::cpu::Math (gmk/cpu_math.h) instead, whose float functions vectorise.
struct LibMath {
  static GMK_HOST_DEVICE float exp(float v) { return expf(v); }
  static GMK_HOST_DEVICE double exp(double v) { return ::exp(v); }
  static GMK_HOST_DEVICE float tanh(float v) { return tanhf(v); }
  static GMK_HOST_DEVICE double tanh(double v) { return ::tanh(v); }
  static GMK_HOST_DEVICE float expm1(float v) { return expm1f(v); }
  static GMK_HOST_DEVICE double expm1(double v) { return ::expm1(v); }
  static GMK_HOST_DEVICE float log(float v) { return logf(v); }
  static GMK_HOST_DEVICE double log(double v) { return ::log(v); }
  static GMK_HOST_DEVICE float log1p(float v) { return log1pf(v); }
  static GMK_HOST_DEVICE double log1p(double v) { return ::log1p(v); }
};

}  // namespace gmk
