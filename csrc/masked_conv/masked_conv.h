// Entry points of the masked and shifted convolution kernels, called by masked_conv_ops.cpp.
#pragma once
#include "gmk/masked_conv.h"

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

}  // namespace gmk::masked_conv
