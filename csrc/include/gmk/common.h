// Definitions shared by every family's CPU and CUDA code. No torch header: .cu files include this.
#pragma once
#include <cstdint>

#if defined(__CUDACC__)
#define GMK_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define GMK_HOST_DEVICE inline
#endif

namespace gmk {

// Element types the kernels take; the ops map at::ScalarType onto these.
enum class DType : int { Float32, Float16, BFloat16, Float64 };

// A tensor seen as (outer, channels, inner): sizes live in the op's argument struct, strides here.
struct Strides3 {
  int64_t outer = 0, channel = 0, inner = 0;
};

}  // namespace gmk
