// StyleGAN2-ADA's fused bias and activation (docs/conventions.md, "Bias and activation"):
// y = clamp(gain * act(x + b), -clamp, clamp), with the derivatives the backward ops compute.
// Per-element math shared by the CPU and CUDA kernels; no torch header.
#pragma once
#include <cstdint>

#include "gmk/common.h"

#if defined(GMK_WITH_CUDA)
#include <cuda_runtime_api.h>
#endif

namespace gmk::bias_act {

enum class Act : int { Linear, Relu, Lrelu, Tanh, Sigmoid, Elu, Selu, Softplus, Swish };

// What a kernel computes: y (forward); the gradient of v = x + b from grad and x, b (smooth acts) or
// y (relu, lrelu, clamped linear) or nothing (linear); or grad2 * grad * gain * act''(v) (Backward2).
enum class Mode : int { Forward, Backward, Backward2 };

// Every tensor has the same dense layout, walked in memory order as a contiguous (outer, channels,
// inner) array: element (o, c, i) at (o * channels + c) * inner + i, and b (channels) contiguous (or
// null). Forward reads x, b; Backward reads grad and x, b or y; Backward2 reads grad2, grad, x, b.
// out has the same layout.
struct Args {
  int64_t outer = 0, channels = 1, inner = 0;
  const void* x = nullptr;
  const void* b = nullptr;
  const void* y = nullptr;
  const void* grad = nullptr;
  const void* grad2 = nullptr;
  void* out = nullptr;
  Mode mode = Mode::Forward;
  Act act = Act::Linear;
  double alpha = 0, gain = 1, clamp = 0;
  bool has_clamp = false;
  DType dtype = DType::Float32;
};

constexpr double kSeluScale = 1.0507009873554804934193349852946;
constexpr double kSeluAlpha = 1.6732632423543772848170429916717;
constexpr double kSoftplusThreshold = 20.0;  // torch's softplus: v above it gives v

// Whether the backward reads x and b (the smooth acts) rather than y.
constexpr bool reads_x(Act act) { return act >= Act::Tanh; }

template <typename Math, typename T>
GMK_HOST_DEVICE T sigmoid(T v) {
  return T(1) / (T(1) + Math::exp(-v));
}

// log(1 + e) for e >= 0 without log1p: log(u) * e / (u - 1) with u = 1 + e rounded corrects the rounding
// of u (Goldberg's trick), and is e itself where u rounds to 1.
template <typename Math, typename T>
GMK_HOST_DEVICE T log1p_of(T e) {
  const T u = T(1) + e;
  const T d = u - T(1);
  return d == T(0) ? e : Math::log(u) * (e / d);
}

template <Act kAct, typename Math, typename T>
GMK_HOST_DEVICE T activate(T v, T alpha) {
  if constexpr (kAct == Act::Linear) return v;
  if constexpr (kAct == Act::Relu) return v < T(0) ? T(0) : v;  // NaN stays NaN
  if constexpr (kAct == Act::Lrelu) return v > T(0) ? v : v * alpha;
  if constexpr (kAct == Act::Tanh) return Math::tanh(v);
  if constexpr (kAct == Act::Sigmoid) return sigmoid<Math>(v);
  if constexpr (kAct == Act::Elu) return v > T(0) ? v : Math::expm1(v);
  if constexpr (kAct == Act::Selu) return T(kSeluScale) * (v > T(0) ? v : T(kSeluAlpha) * Math::expm1(v));
  if constexpr (kAct == Act::Softplus) {
    return v > T(kSoftplusThreshold) ? v : log1p_of<Math>(Math::exp(v > T(kSoftplusThreshold) ? T(0) : v));
  }
  if constexpr (kAct == Act::Swish) return v * sigmoid<Math>(v);
  return v;
}

// act'(v) of the smooth acts; at v = 0 (elu, selu) and at the threshold (softplus) the lower branch, as torch.
template <Act kAct, typename Math, typename T>
GMK_HOST_DEVICE T derivative(T v) {
  if constexpr (kAct == Act::Tanh) {
    const T t = Math::tanh(v);
    return T(1) - t * t;
  }
  if constexpr (kAct == Act::Sigmoid) {
    const T s = sigmoid<Math>(v);
    return s * (T(1) - s);
  }
  if constexpr (kAct == Act::Elu) return v > T(0) ? T(1) : Math::exp(v);
  if constexpr (kAct == Act::Selu) return v > T(0) ? T(kSeluScale) : T(kSeluScale * kSeluAlpha) * Math::exp(v);
  if constexpr (kAct == Act::Softplus) return v > T(kSoftplusThreshold) ? T(1) : sigmoid<Math>(v);
  if constexpr (kAct == Act::Swish) {
    const T s = sigmoid<Math>(v);
    return s * (T(1) + v * (T(1) - s));
  }
  return T(1);
}

// act''(v) of the smooth acts; at v = 0 (elu, selu) and at the threshold (softplus) the upper branch (0),
// as torch's double backward.
template <Act kAct, typename Math, typename T>
GMK_HOST_DEVICE T second_derivative(T v) {
  if constexpr (kAct == Act::Tanh) {
    const T t = Math::tanh(v);
    return T(-2) * t * (T(1) - t * t);
  }
  const T s = sigmoid<Math>(v);
  if constexpr (kAct == Act::Sigmoid) return s * (T(1) - s) * (T(1) - T(2) * s);
  if constexpr (kAct == Act::Elu) return v < T(0) ? Math::exp(v) : T(0);
  if constexpr (kAct == Act::Selu) return v < T(0) ? T(kSeluScale * kSeluAlpha) * Math::exp(v) : T(0);
  if constexpr (kAct == Act::Softplus) return v < T(kSoftplusThreshold) ? s * (T(1) - s) : T(0);
  if constexpr (kAct == Act::Swish) return s * (T(1) - s) * (T(2) + v * (T(1) - T(2) * s));
  return T(0);
}

// The slope of relu, lrelu or linear read off the stored y: the sign of y * gain is the sign of act(v).
template <Act kAct, typename T>
GMK_HOST_DEVICE T slope_from_y(T y, T gain, T alpha) {
  if constexpr (kAct == Act::Relu) return y * gain > T(0) ? T(1) : T(0);
  if constexpr (kAct == Act::Lrelu) return y * gain > T(0) ? T(1) : alpha;
  return T(1);
}

// The parameters of one call in the math type.
template <typename T>
struct Params {
  T alpha, gain, clamp;
  bool has_clamp;
};

template <typename T>
GMK_HOST_DEVICE T clamp_value(T u, const Params<T>& p) {
  if (!p.has_clamp) return u;
  return u < -p.clamp ? -p.clamp : (u > p.clamp ? p.clamp : u);  // NaN stays NaN
}

// Whether the derivative passes at an output u (before the clamp) or y (after it): strictly inside.
template <typename T>
GMK_HOST_DEVICE bool passes(T u, const Params<T>& p) {
  return !p.has_clamp || (u > -p.clamp && u < p.clamp);
}

template <Act kAct, typename Math, typename T>
GMK_HOST_DEVICE T forward(T v, const Params<T>& p) {
  return clamp_value(p.gain * activate<kAct, Math>(v, p.alpha), p);
}

// The gradient of v from grad and v = x + b (smooth acts).
template <Act kAct, typename Math, typename T>
GMK_HOST_DEVICE T backward_from_x(T grad, T v, const Params<T>& p) {
  const T value = grad * p.gain * derivative<kAct, Math>(v);
  return passes(p.gain * activate<kAct, Math>(v, p.alpha), p) ? value : T(0);
}

// The gradient of v from grad and the stored y (relu, lrelu, linear).
template <Act kAct, typename T>
GMK_HOST_DEVICE T backward_from_y(T grad, T y, const Params<T>& p) {
  const T value = grad * p.gain * slope_from_y<kAct>(y, p.gain, p.alpha);
  return passes(y, p) ? value : T(0);
}

template <Act kAct, typename Math, typename T>
GMK_HOST_DEVICE T backward2(T grad2, T grad, T v, const Params<T>& p) {
  const T value = grad2 * grad * p.gain * second_derivative<kAct, Math>(v);
  return passes(p.gain * activate<kAct, Math>(v, p.alpha), p) ? value : T(0);
}

// Calls fn(std::integral_constant-like tag) with the act as a compile-time value.
template <Act kAct>
struct ActTag {
  static constexpr Act value = kAct;
};

template <typename Fn>
GMK_HOST_DEVICE void with_act(Act act, Fn fn) {
  switch (act) {
    case Act::Linear: return fn(ActTag<Act::Linear>{});
    case Act::Relu: return fn(ActTag<Act::Relu>{});
    case Act::Lrelu: return fn(ActTag<Act::Lrelu>{});
    case Act::Tanh: return fn(ActTag<Act::Tanh>{});
    case Act::Sigmoid: return fn(ActTag<Act::Sigmoid>{});
    case Act::Elu: return fn(ActTag<Act::Elu>{});
    case Act::Selu: return fn(ActTag<Act::Selu>{});
    case Act::Softplus: return fn(ActTag<Act::Softplus>{});
    case Act::Swish: return fn(ActTag<Act::Swish>{});
  }
}

// Entry points of the kernels (bias_act_cpu.cpp, bias_act_cuda.cu), called by bias_act_ops.cpp.
void run_cpu(const Args& args);
#if defined(GMK_WITH_CUDA)
cudaError_t run_cuda(const Args& args, cudaStream_t stream);
#endif

}  // namespace gmk::bias_act
