// Entry points of the masked and shifted convolution kernels, called by masked_conv_ops.cpp.
#pragma once
#include "gmk/masked_conv.h"

#if defined(GMK_WITH_CUDA)
#include <cuda_runtime_api.h>
#endif

namespace gmk::masked_conv {

// x, y and grad_x are (N, Cin or Cout, H, W), dense in NCHW order or, when x_channels_last, in
// channels_last order; grad_out (N, Cout, H, W) dense in the order grad_out_channels_last says.
// weight (Cout, Cin, kh, kw) and grad_weight contiguous; bias and grad_bias (Cout). Forward reads
// x, weight, bias (null: none) and writes y; backward reads grad_out, x, weight and writes those of
// grad_x, grad_weight, grad_bias that are not null. All of one dtype.
struct Args {
  Geometry geometry;
  DType dtype = DType::Float32;
  bool x_channels_last = false, grad_out_channels_last = false;
  const void* x = nullptr;
  const void* weight = nullptr;
  const void* bias = nullptr;
  const void* grad_out = nullptr;
  void* y = nullptr;
  void* grad_x = nullptr;
  void* grad_weight = nullptr;
  void* grad_bias = nullptr;
};

void forward_cpu(const Args& args);
void backward_cpu(const Args& args);

// The CUDA kernels' problems (masked_conv_cuda.cu). Activations are dense channels_last
// (N, H, W, C); weights are packed per live tap (the first live_taps taps in raster order).

// out[p, n] = bias[n] + sum over live taps t and channels k of a[p + offset_t, k] * b[t, k, n], zero
// outside the image. Forward: a = x, b (taps, Cin, Cout), offsets those of the geometry. grad_x
// (reflect): a = grad_out, b (taps, Cout, Cin), offsets reflected, bias null. The centre tap's dead
// channel pairs are skipped whatever b holds there.
struct TapGemmArgs {
  Geometry geometry;
  DType dtype = DType::Float32;
  bool allow_tf32 = false, reflect = false, out_channels_last = false;
  int64_t live_taps = 0, reduce_channels = 0, out_channels = 0;
  const void* a = nullptr;
  const void* b = nullptr;
  const void* bias = nullptr;
  void* out = nullptr;  // (N, out_channels, H, W), NCHW or channels_last
};

// partial[split, t, i, o] = sum over the positions p of split of x[p + offset_t, i] * grad_out[p, o]
// in float32 (zero at the centre tap's dead pairs); the caller sums over splits.
struct WeightGradArgs {
  Geometry geometry;
  DType dtype = DType::Float32;
  bool allow_tf32 = false;
  int64_t live_taps = 0, splits = 1, positions_per_split = 0;
  const void* x = nullptr;
  const void* grad_out = nullptr;
  float* partial = nullptr;  // (splits, live_taps, Cin, Cout)
};

#if defined(GMK_WITH_CUDA)
cudaError_t tap_gemm_cuda(const TapGemmArgs& args, cudaStream_t stream);
cudaError_t weight_grad_cuda(const WeightGradArgs& args, cudaStream_t stream);
#endif

}  // namespace gmk::masked_conv
