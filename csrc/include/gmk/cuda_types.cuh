// The CUDA kernels' element types (.cu files only): the dtype dispatch, and the conversions. The
// kernels load float32, float16 or bfloat16 and compute in float32.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime_api.h>

#include "gmk/common.h"

namespace gmk {

// Calls fn with a value of the CUDA element type of dtype (float, __half, __nv_bfloat16) and returns
// its cudaError_t; float64, which the ops reject on CUDA, gives cudaErrorInvalidValue. The CPU side's
// counterpart is with_scalar_type (gmk/aten.h).
template <typename Fn>
cudaError_t with_cuda_type(DType dtype, Fn fn) {
  switch (dtype) {
    case DType::Float32: return fn(float{});
    case DType::Float16: return fn(__half{});
    case DType::BFloat16: return fn(__nv_bfloat16{});
    default: return cudaErrorInvalidValue;
  }
}

__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }

// Round to nearest even.
template <typename T>
__device__ __forceinline__ T from_float(float v);
template <>
__device__ __forceinline__ float from_float<float>(float v) { return v; }
template <>
__device__ __forceinline__ __half from_float<__half>(float v) { return __float2half_rn(v); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

}  // namespace gmk
