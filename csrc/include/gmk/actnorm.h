// Actnorm (Glow arXiv 1807.03039, table 1): y = (x + b) exp(log_s) per channel; reverse
// x = y exp(-log_s) - b. Per-channel math shared by the CPU and CUDA kernels.
#pragma once
#include "gmk/common.h"

#if defined(GMK_WITH_CUDA)
#include <cuda_runtime_api.h>
#endif

namespace gmk::actnorm {

// in (outer, channels, inner), any strides: x forward, y in reverse. bias and log_scale (channels)
// contiguous in the compute type (float; double for float64 tensors). Forward writes out, contiguous
// (outer, channels, inner). Backward reads grad_out (contiguous, the gradient of out), writes out =
// the gradient of in, and the per-channel sums of grad_out and grad_out * in into sums (channels,
// parts, 2): double on the CPU, float on CUDA, one partial sum per part of a channel's elements.
struct Args {
  int64_t outer = 0, channels = 0, inner = 0;
  const void* in = nullptr;
  Strides3 in_strides;
  const void* bias = nullptr;
  const void* log_scale = nullptr;
  const void* grad_out = nullptr;
  void* out = nullptr;
  void* sums = nullptr;
  int64_t parts = 1;
  bool reverse = false;
  DType dtype = DType::Float32;
};

// out = (in + pre_shift) * scale + post_shift: forward (in + b) e^{log_s}, reverse in e^{-log_s} - b,
// as the reference writes them. Not folded into in * scale + b * scale: where e^{log_s} overflows, the
// folded form gives inf - inf = NaN where (in + b) e^{log_s} is ±inf (README, non-finite values).
// d out / d in = scale in both directions.
template <typename T>
struct Affine {
  T pre_shift, scale, post_shift;

  GMK_HOST_DEVICE T operator()(T in) const { return (in + pre_shift) * scale + post_shift; }
};

template <typename T>
GMK_HOST_DEVICE Affine<T> affine(T bias, T log_scale, bool reverse) {
  const T scale = LibMath::exp(reverse ? -log_scale : log_scale);
  return reverse ? Affine<T>{T(0), scale, -bias} : Affine<T>{bias, scale, T(0)};
}

// Entry points of the actnorm kernels, called by actnorm_ops.cpp.
void forward_cpu(const Args& args);
void backward_cpu(const Args& args);

#if defined(GMK_WITH_CUDA)
cudaError_t forward_cuda(const Args& args, cudaStream_t stream);
cudaError_t backward_cuda(const Args& args, cudaStream_t stream);
// How many partial sums per channel backward_cuda writes (Args::parts) for these sizes.
int64_t backward_parts_cuda(int64_t outer, int64_t channels, int64_t inner);
#endif

}  // namespace gmk::actnorm
