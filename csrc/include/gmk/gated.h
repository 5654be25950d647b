// Gated activation (Gated PixelCNN arXiv 1606.05328 eq. 2, WaveNet arXiv 1609.03499 eq. 2,
// PixelCNN++ gated_resnet): y = f(a) * sigmoid(b), f = tanh or identity, with [a; b] = x (+ cond)
// split in halves along the channel axis. Per-element math shared by the CPU and CUDA kernels.
#pragma once
#include <cmath>

#include "gmk/common.h"

#if defined(GMK_WITH_CUDA)
#include <cuda_runtime_api.h>
#endif

namespace gmk::gated {

// x and cond are (outer, 2 * half, inner) with any strides; cond may be null.
// Forward writes y (outer, half, inner); backward reads grad_y (outer, half, inner) and writes
// grad_h (outer, 2 * half, inner), the gradient with respect to x + cond. All three contiguous.
struct Args {
  int64_t outer = 0, half = 0, inner = 0;
  const void* x = nullptr;
  Strides3 x_strides;
  const void* cond = nullptr;
  Strides3 cond_strides;
  const void* grad_y = nullptr;
  void* out = nullptr;
  bool tanh = true;
  DType dtype = DType::Float32;
};

// s = sigmoid(v) and 1 - s, each to full relative precision: e = e^-|v| <= 1 never overflows,
// and 1 - s is never formed by a subtraction that cancels (it is tiny where s saturates).
template <typename Math, typename T>
GMK_HOST_DEVICE void sigmoid_pair(T v, T& s, T& one_minus_s) {
  const T e = Math::exp(v < T(0) ? v : -v);
  const T p = T(1) / (T(1) + e);
  const T q = e * p;
  s = v >= T(0) ? p : q;
  one_minus_s = v >= T(0) ? q : p;
}

template <bool kTanh, typename Math = LibMath, typename T>
GMK_HOST_DEVICE T forward(T a, T b) {
  T s, one_minus_s;
  sigmoid_pair<Math>(b, s, one_minus_s);
  return (kTanh ? Math::tanh(a) : a) * s;
}

// dy/da = f'(a) s, dy/db = f(a) s (1 - s), with s = sigmoid(b) and tanh' = 1 - tanh^2.
template <bool kTanh, typename Math = LibMath, typename T>
GMK_HOST_DEVICE void backward(T a, T b, T grad_y, T& grad_a, T& grad_b) {
  T s, one_minus_s;
  sigmoid_pair<Math>(b, s, one_minus_s);
  const T f = kTanh ? Math::tanh(a) : a;
  const T df = kTanh ? T(1) - f * f : T(1);
  grad_a = grad_y * df * s;
  grad_b = grad_y * f * s * one_minus_s;
}

// The kernels (gated_cpu.cpp, gated_cuda.cu), called by gated_ops.cpp: forward writes y, backward grad_h.
void forward_cpu(const Args& args);
void backward_cpu(const Args& args);

#if defined(GMK_WITH_CUDA)
cudaError_t forward_cuda(const Args& args, cudaStream_t stream);
cudaError_t backward_cuda(const Args& args, cudaStream_t stream);
#endif

}  // namespace gmk::gated
