// cached_conv2d: a convolution evaluated from a cache of its input's last rows (gmkernels/reference/
// cached_conv.py): out[n, o, t] = bias[o] + sum_{c,a,b} weight[o, c, a, b] * rows[n, c, R - kh + a,
// column + t * stride + b]. Shared by the CPU and CUDA kernels; no torch header.
#pragma once
#include <cstdint>

#include "gmk/common.h"

#if defined(GMK_WITH_CUDA)
#include <cuda_runtime_api.h>
#endif

namespace gmk::cached_conv {

// rows: any strides, the window's first element at `rows` (row R - kh, column `column` already applied);
// weight (Cout, K = Cin * kh * kw) and bias (Cout) contiguous (bias may be null); out (N, Cout, count)
// contiguous. Arithmetic in float32 (float64 for float64).
struct Args {
  int64_t batch = 0, in_channels = 0, out_channels = 0, kh = 0, kw = 0, count = 0, stride = 1;
  int64_t s_batch = 0, s_channel = 0, s_row = 0, s_column = 0;  // rows' strides, in elements
  const void* rows = nullptr;
  const void* weight = nullptr;
  const void* bias = nullptr;
  void* out = nullptr;
  DType dtype = DType::Float32;

  GMK_HOST_DEVICE int64_t taps() const { return in_channels * kh * kw; }
  // The offset in rows of tap k (k = (c * kh + a) * kw + b) of output t of sample n.
  GMK_HOST_DEVICE int64_t offset(int64_t n, int64_t t, int64_t k) const {
    const int64_t b = k % kw, a = (k / kw) % kh, c = k / (kw * kh);
    return n * s_batch + c * s_channel + a * s_row + (t * stride + b) * s_column;
  }
};

// Entry points of the kernels (cached_conv_cpu.cpp, cached_conv_cuda.cu), called by cached_conv_ops.cpp.
void run_cpu(const Args& args);
#if defined(GMK_WITH_CUDA)
cudaError_t run_cuda(const Args& args, cudaStream_t stream);
#endif

}  // namespace gmk::cached_conv
