// Gated activation (Gated PixelCNN arXiv 1606.05328 eq. 2, WaveNet arXiv 1609.03499 eq. 2,
// PixelCNN++ gated_resnet): y = f(a) * sigmoid(b), f = tanh or identity, with [a; b] = x (+ cond)
// split in halves along the channel axis. Per-element math shared by the CPU and CUDA kernels.
#pragma once
#include <cmath>

#include "gmk/common.h"

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

GMK_HOST_DEVICE float exp_(float v) { return expf(v); }
GMK_HOST_DEVICE double exp_(double v) { return exp(v); }
GMK_HOST_DEVICE float tanh_(float v) { return tanhf(v); }
GMK_HOST_DEVICE double tanh_(double v) { return tanh(v); }

// 1 / (1 + e^-v): e^-v overflows to inf for v < -88 (float), giving exactly 0, never NaN.
template <typename T>
GMK_HOST_DEVICE T sigmoid(T v) {
  return T(1) / (T(1) + exp_(-v));
}

template <bool kTanh, typename T>
GMK_HOST_DEVICE T forward(T a, T b) {
  const T f = kTanh ? tanh_(a) : a;
  return f * sigmoid(b);
}

// dy/da = f'(a) s, dy/db = f(a) s (1 - s), with s = sigmoid(b) and tanh' = 1 - tanh^2.
template <bool kTanh, typename T>
GMK_HOST_DEVICE void backward(T a, T b, T grad_y, T& grad_a, T& grad_b) {
  const T s = sigmoid(b);
  const T f = kTanh ? tanh_(a) : a;
  const T df = kTanh ? T(1) - f * f : T(1);
  grad_a = grad_y * df * s;
  grad_b = grad_y * f * s * (T(1) - s);
}

}  // namespace gmk::gated
