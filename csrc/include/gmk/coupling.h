// Affine and additive coupling (NICE arXiv 1410.8516 eq. 5, RealNVP arXiv 1605.08803 eq. 6-7, Glow
// arXiv 1807.03039 table 1): per-element math shared by the CPU and CUDA kernels.
//
// Channel layouts: x is (outer, 2 * half, inner), x_a its first half of the channels, x_b the
// second. Checkerboard layouts (RealNVP §3.4): x is (outer, half, inner), inner = height * width
// row-major, and each channel holds both: x_a at the positions (i, j) with i + j even
// (Checkerboard) or odd (CheckerboardOdd), x_b at the others. h holds the coupling network's raw
// scale r and shift t per element of x_b (only t for additive); a checkerboard's h is laid out as
// Halves over every position, and only x_b's positions are read. The op writes y (x_a passed
// through, x_b transformed) and the per-sample sum of log s; reverse maps y back to x and the sum is
// negated.
#pragma once
#include <cmath>

#include "gmk/common.h"

#if defined(GMK_WITH_CUDA)
#include <cuda_runtime_api.h>
#endif

namespace gmk::coupling {

enum class Transform : int {
  Glow,     // s = sigmoid(r + 2), y_b = (x_b + t) s
  RealNVP,  // s = exp(r),         y_b = x_b s + t
  Additive  // s = 1,              y_b = x_b + t
};

// Where r and t of channel c (of half) sit among h's channels.
enum class Layout : int {
  Halves,          // r = h[:, c], t = h[:, half + c]
  Interleaved,     // t = h[:, 2c], r = h[:, 2c + 1] (Glow's TF code)
  Checkerboard,    // x_b: (i + j) odd; r, t as Halves, with half = C
  CheckerboardOdd  // x_b: (i + j) even
};

GMK_HOST_DEVICE bool is_checkerboard(Layout layout) {
  return layout == Layout::Checkerboard || layout == Layout::CheckerboardOdd;
}

// Whether position p = i * width + j of a checkerboard channel is in x_b.
GMK_HOST_DEVICE bool checkerboard_b(Layout layout, int64_t width, int64_t p) {
  const int64_t i = p / width;
  return ((i + (p - i * width) + (layout == Layout::CheckerboardOdd ? 1 : 0)) & 1) != 0;
}

// x and h: (outer, C, inner) with any strides, C = 2 * half (C = half for a checkerboard, whose
// rows have width elements); h has 2 * half channels (half for additive). Forward writes y (outer, 2 * half, inner, contiguous) and logdet (outer; float for the
// float types, double for float64). Backward reads grad_y (contiguous, x's shape) and grad_logdet
// (outer, logdet's type), writes grad_x (x's shape) and grad_h (h's shape), both contiguous.
struct Args {
  int64_t outer = 0, half = 0, inner = 0;
  int64_t width = 1;           // checkerboard layouts: the length of a spatial row (inner % width == 0)
  const void* x = nullptr;
  Strides3 x_strides;
  const void* h = nullptr;
  Strides3 h_strides;
  const void* grad_y = nullptr;
  const void* grad_logdet = nullptr;
  void* out = nullptr;         // y (forward) or grad_x (backward)
  void* grad_h = nullptr;      // backward only
  void* logdet = nullptr;      // forward only
  void* workspace = nullptr;   // forward on CUDA: per-block partial sums (see workspace_floats)
  Transform transform = Transform::Glow;
  Layout layout = Layout::Halves;
  bool reverse = false;
  DType dtype = DType::Float32;
};

// Channel offsets (in channels of h) of r and t for channel c of x_b.
GMK_HOST_DEVICE int64_t r_channel(Layout layout, int64_t half, int64_t c) {
  return layout == Layout::Interleaved ? 2 * c + 1 : c;
}
GMK_HOST_DEVICE int64_t t_channel(Transform transform, Layout layout, int64_t half, int64_t c) {
  if (transform == Transform::Additive) return c;
  return layout == Layout::Interleaved ? 2 * c : half + c;
}

// log(1 + e) for e in [0, 1] to a few ulp on Math::log alone (Goldberg's correction): u = 1 + e
// rounds, and log(u) * e / (u - 1) undoes the rounding; u == 1 means e is below half an ulp of 1.
template <typename Math, typename T>
GMK_HOST_DEVICE T log1p_unit(T e) {
  const T u = T(1) + e;
  const T d = u - T(1);
  return d == T(0) ? e : Math::log(u) * (e / (d == T(0) ? T(1) : d));
}

// Glow's scale at v = r + 2, each quantity to full relative precision: with e = e^-|v| <= 1,
//   s = sigmoid(v), 1 - s, log s = min(v, 0) - log(1 + e), and for the reverse 1/s = 1 + e^-v and
//   (1 - s)/s = e^-v. No subtraction cancels (see gmk::gated::sigmoid_pair).
template <typename T>
struct GlowScale {
  T s, one_minus_s, log_s, inv_s, ratio;
};

template <typename Math, typename T>
GMK_HOST_DEVICE GlowScale<T> glow_scale(T r) {
  const T v = r + T(2);
  const bool positive = v >= T(0);
  const T e = Math::exp(positive ? -v : v);
  const T p = T(1) / (T(1) + e);
  const T q = e * p;
  GlowScale<T> g;
  g.s = positive ? p : q;
  g.one_minus_s = positive ? q : p;
  g.log_s = (positive ? T(0) : v) - log1p_unit<Math>(e);
  g.ratio = positive ? e : T(1) / e;  // e^-v
  g.inv_s = T(1) + g.ratio;
  return g;
}

// One element of x_b (forward) or y_b (reverse), z, to its image; log_s gets log s (not negated).
template <Transform kTransform, bool kReverse, typename Math = LibMath, typename T>
GMK_HOST_DEVICE T apply(T z, T r, T t, T& log_s) {
  if constexpr (kTransform == Transform::Glow) {
    const GlowScale<T> g = glow_scale<Math>(r);
    log_s = g.log_s;
    return kReverse ? z * g.inv_s - t : (z + t) * g.s;
  } else if constexpr (kTransform == Transform::RealNVP) {
    log_s = r;
    return kReverse ? (z - t) * Math::exp(-r) : z * Math::exp(r) + t;
  } else {
    log_s = T(0);
    return kReverse ? z - t : z + t;
  }
}

// Gradients through one element: grad_out is the gradient of the output element, grad_logdet the
// gradient of the sample's logdet (whose sign flips in reverse). z is the input element (x_b, or y_b
// in reverse). Writes the gradients of z, r and t.
//   glow:      y = (z + t) s:        dz = dt = g s,   dr = g (z + t) s (1 - s) + gl (1 - s)
//   glow rev:  x = z / s - t:        dz = g / s, dt = -g, dr = -g z (1 - s)/s - gl (1 - s)
//   realnvp:   y = z e^r + t:        dz = g e^r, dt = g,  dr = g z e^r + gl
//   realnvp rev: x = (z - t) e^-r:   dz = g e^-r, dt = -g e^-r, dr = -g (z - t) e^-r - gl
//   additive (rev): dz = g, dt = g (-g)
template <Transform kTransform, bool kReverse, typename Math = LibMath, typename T>
GMK_HOST_DEVICE void backward(T z, T r, T t, T grad_out, T grad_logdet, T& grad_z, T& grad_r, T& grad_t) {
  if constexpr (kTransform == Transform::Glow) {
    const GlowScale<T> g = glow_scale<Math>(r);
    if constexpr (kReverse) {
      grad_z = grad_out * g.inv_s;
      grad_t = -grad_out;
      grad_r = -(grad_out * z * g.ratio + grad_logdet * g.one_minus_s);
    } else {
      grad_z = grad_out * g.s;
      grad_t = grad_z;
      grad_r = (grad_out * (z + t) * g.s + grad_logdet) * g.one_minus_s;
    }
  } else if constexpr (kTransform == Transform::RealNVP) {
    if constexpr (kReverse) {
      const T e = Math::exp(-r);
      grad_z = grad_out * e;
      grad_t = -grad_z;
      grad_r = -(grad_z * (z - t) + grad_logdet);
    } else {
      const T e = Math::exp(r);
      grad_z = grad_out * e;
      grad_t = grad_out;
      grad_r = grad_z * z + grad_logdet;
    }
  } else {
    grad_z = grad_out;
    grad_t = kReverse ? -grad_out : grad_out;
    grad_r = T(0);
  }
}

// The CUDA kernels give each block kCudaBlockElements elements of one sample's x_b; the forward
// writes one partial sum of log s per block into args.workspace (floats) when a sample spans more
// than one block, then sums them per sample in a fixed order (deterministic).
constexpr int64_t kCudaBlockElements = 2048;

inline int64_t cuda_blocks_per_sample(const Args& args) {
  return (args.half * args.inner + kCudaBlockElements - 1) / kCudaBlockElements;
}

// Floats of workspace the CUDA forward needs (0: none).
inline int64_t cuda_workspace_floats(const Args& args) {
  const int64_t blocks = cuda_blocks_per_sample(args);
  return args.transform == Transform::Additive || blocks <= 1 ? 0 : args.outer * blocks;
}

// Entry points of the coupling kernels, called by coupling_ops.cpp.
void forward_cpu(const Args& args);
void backward_cpu(const Args& args);

#if defined(GMK_WITH_CUDA)
cudaError_t forward_cuda(const Args& args, cudaStream_t stream);
cudaError_t backward_cuda(const Args& args, cudaStream_t stream);
#endif

}  // namespace gmk::coupling
