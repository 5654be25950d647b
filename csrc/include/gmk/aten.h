// Between ATen and the kernels' plain types: for *_ops.cpp and *_cpu.cpp files only (it includes
// torch headers, which .cu files must not).
#pragma once
#include <ATen/core/Tensor.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <torch/library.h>

#if defined(GMK_WITH_CUDA)
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime_api.h>
#endif

#include "gmk/common.h"

namespace gmk {

// The kernels' DType of a floating-point tensor; a TypeError naming op and argument otherwise.
inline DType to_dtype(const char* op, const char* name, const at::Tensor& t) {
  switch (t.scalar_type()) {
    case at::kFloat: return DType::Float32;
    case at::kDouble: return DType::Float64;
    case at::kHalf: return DType::Float16;
    case at::kBFloat16: return DType::BFloat16;
    default:
      TORCH_CHECK_TYPE(false, op, ": ", name, " must be float32, float16, bfloat16 or float64, got ",
                       t.scalar_type());
  }
}

// Calls fn with a value of the C++ type of dtype (c10::Half and c10::BFloat16 for the half types).
template <typename Fn>
void with_scalar_type(DType dtype, Fn fn) {
  switch (dtype) {
    case DType::Float32: return fn(float{});
    case DType::Float64: return fn(double{});
    case DType::Float16: return fn(c10::Half{});
    case DType::BFloat16: return fn(c10::BFloat16{});
  }
}

// Runs the CPU kernel on args unless there is no work.
template <typename Args, typename CpuFn>
void run_cpu(int64_t work, const Args& args, CpuFn cpu) {
  if (work > 0) cpu(args);
}

#if defined(GMK_WITH_CUDA)
// Runs the CUDA kernel on args for CUDA tensor t unless there is no work: under a device guard, on
// the current stream, with the launch error raised as op's.
template <typename Args, typename CudaFn>
void run_cuda(const char* op, const at::Tensor& t, int64_t work, const Args& args, CudaFn cuda) {
  if (work == 0) return;
  TORCH_CHECK_TYPE(args.dtype != DType::Float64, op, ": float64 is not supported on CUDA");
  const c10::cuda::CUDAGuard guard(t.device());
  const cudaError_t err = cuda(args, c10::cuda::getCurrentCUDAStream().stream());
  TORCH_CHECK(err == cudaSuccess, op, ": CUDA kernel failed: ", cudaGetErrorString(err));
}
#endif

// The kernel launchers an op's shared body takes, launch(work, args): on_cpu(fn) runs the CPU kernel
// fn; on_cuda(op, t, fn) runs the CUDA kernel fn for CUDA tensor t (as run_cuda).
template <typename CpuFn>
auto on_cpu(CpuFn cpu) {
  return [cpu](int64_t work, const auto& args) { run_cpu(work, args, cpu); };
}
#if defined(GMK_WITH_CUDA)
template <typename CudaFn>
auto on_cuda(const char* op, const at::Tensor& t, CudaFn cuda) {
  return [op, &t, cuda](int64_t work, const auto& args) { run_cuda(op, t, work, args, cuda); };
}
#endif

}  // namespace gmk
