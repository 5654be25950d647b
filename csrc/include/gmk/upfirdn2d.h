// StyleGAN2-ADA's upfirdn2d (docs/conventions.md, "upfirdn2d"): per channel,
// out[oy, ox] = gain * sum_{j,k} w[j, k] U[oy * down_y + j - pad_y0, ox * down_x + k - pad_x0], U the
// image upsampled by zero insertion, w the filter flipped (unless flip_filter). No torch header.
#pragma once
#include <cstdint>

#include "gmk/common.h"

#if defined(GMK_WITH_CUDA)
#include <cuda_runtime_api.h>
#endif

namespace gmk::upfirdn2d {

// x (batch, channels, in_h, in_w) with any strides (x_strides in that order); f (fh, fw) contiguous in
// the compute type (float; double for float64); out (batch, channels, out_h, out_w), contiguous, or
// channels_last when out_channels_last.
struct Args {
  int64_t batch = 0, channels = 0, in_h = 0, in_w = 0, out_h = 0, out_w = 0;
  const void* x = nullptr;
  int64_t x_strides[4] = {0, 0, 0, 0};
  const void* f = nullptr;
  int64_t fh = 1, fw = 1;
  void* out = nullptr;
  bool out_channels_last = false;
  int64_t upx = 1, upy = 1, downx = 1, downy = 1, padx0 = 0, pady0 = 0;
  bool flip_filter = false;
  double gain = 1.0;
  DType dtype = DType::Float32;
};

// a / b rounded towards -inf, for b > 0.
GMK_HOST_DEVICE int64_t floor_div(int64_t a, int64_t b) {
  const int64_t q = a / b;
  return (a % b != 0 && a < 0) ? q - 1 : q;
}

// a - floor_div(a, b) * b: the phase of a modulo b > 0, in [0, b).
GMK_HOST_DEVICE int64_t phase_of(int64_t a, int64_t b) { return a - floor_div(a, b) * b; }

// The tap of the flipped (or not) filter that multiplies U[o * down + j - pad0] along one axis.
GMK_HOST_DEVICE int64_t tap_index(int64_t j, int64_t taps, bool flip_filter) {
  return flip_filter ? j : taps - 1 - j;
}

// Entry points of the kernels (upfirdn2d_cpu.cpp, upfirdn2d_cuda.cu), called by upfirdn2d_ops.cpp.
void run_cpu(const Args& args);
#if defined(GMK_WITH_CUDA)
cudaError_t run_cuda(const Args& args, cudaStream_t stream);
#endif

}  // namespace gmk::upfirdn2d
