// The 1x1 convolution (the invertible 1x1 convolution and actnorm fused into it): y[o, :, i] =
// weight · x[o, :, i] + bias at every position. The kernels' arguments and entry points, called by
// invconv_ops.cpp. No torch header: .cu files include this.
#pragma once
#include <optional>

#include "gmk/common.h"

#if defined(GMK_WITH_CUDA)
#include <cuda_runtime_api.h>
#endif

namespace at {
class Tensor;  // only named here: the CPU side takes tensors (below)
}  // namespace at

namespace gmk::invconv {

// x (outer, in_channels, inner), any strides; weight (out_channels, in_channels) and bias
// (out_channels) or null, contiguous float; out (outer, out_channels, inner) contiguous.
struct Args {
  int64_t outer = 0, in_channels = 0, out_channels = 0, inner = 0;
  const void* x = nullptr;
  Strides3 x_strides;
  const float* weight = nullptr;
  const float* bias = nullptr;
  void* out = nullptr;
  DType dtype = DType::Float32;
};

// The CPU implementation, and CUDA's where the kernel does not apply (invconv_cpu.cpp): a batched GEMM
// over the (channels, positions) view of each sample, in the weight's dtype (float, or double). It is
// ATen's GEMM (MKL/oneDNN, cuBLAS), so it takes tensors rather than Args.
at::Tensor conv1x1_gemm(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias);

#if defined(GMK_WITH_CUDA)
// Whether conv1x1_cuda takes these channel counts (the weight must fit in shared memory).
bool conv1x1_cuda_fits(int64_t in_channels, int64_t out_channels);
cudaError_t conv1x1_cuda(const Args& args, cudaStream_t stream);
#endif

}  // namespace gmk::invconv
