// WaveNet's dilated causal convolution and residual layer (arXiv 1609.03499; docs/conventions.md,
// "Causal convolution and WaveNet"): the geometry and per-element math shared by the CPU and CUDA
// kernels, the CUDA kernels' arguments, and the entry points.
//   y[n, o, t] = b[o] + Σ_{j<k} Σ_i W[o, i, j] · x[n, i, t - (k-1-j)·d]      (zero where the index < 0)
//   layer: h = conv(x) + cond, z = tanh(h_a) ⊙ σ(h_b) (gmk/gated.h),
//          x_next = (x + W_res z + b_res) · residual_scale, skip = W_skip z + b_skip
#pragma once
#include <array>
#include <cstdint>
#include <optional>
#include <tuple>

#include "gmk/common.h"
#include "gmk/gated.h"

#if defined(GMK_WITH_CUDA)
#include <cuda_runtime_api.h>
#endif

namespace at {
class Tensor;  // only named here: the CPU entry points take tensors (end of file)
}  // namespace at

namespace gmk::causal_conv {

// How far back tap j of a k-tap kernel with dilation d reads in a sequence of T steps: (k-1-j)·d, or T
// when that is more (the tap then reads only the zeros before the start, whatever its reach), so that
// the offsets t ± shift of the kernels stay within [-T, 2T) for every dilation the ops accept ((k-1)·d
// below 2^63). Tap k-1 reads the present sample.
GMK_HOST_DEVICE int64_t tap_shift(int64_t tap, int64_t kernel_size, int64_t dilation, int64_t length) {
  const int64_t steps = kernel_size - 1 - tap;
  return steps > 0 && dilation > length / steps ? length : steps * dilation;
}

// One convolution GEMM, for the CUDA kernels:
//   out[n, o, t] = bias[o] + Σ_j Σ_i w[o, i, j] · in[n, i, t + sign · tap_shift(j)]   (zero outside [0, T))
// sign = -1: the causal convolution (in = x, w = weight (Cout, Cin, k));
// sign = +1: its gradient with respect to x (in = grad_out, w = weight seen as (Cin, Cout, k) through
// its strides), the taps mirrored so that grad_x[t] gathers the outputs t + shift that read x[t].
struct ConvArgs {
  int64_t batch = 0, in_channels = 0, out_channels = 0, length = 0, kernel_size = 1, dilation = 1;
  int sign = -1;
  const void* in = nullptr;
  Strides3 in_strides;
  const void* weight = nullptr;
  int64_t w_out_stride = 0, w_in_stride = 0, w_tap_stride = 0;
  const void* bias = nullptr;  // null: none; else (out_channels) contiguous
  void* out = nullptr;         // (batch, out_channels, length) contiguous
  DType dtype = DType::Float32;
};

// Gradient of the weight, for the CUDA kernels: partial[s, o, i, j] (float32, contiguous) is the sum
// over the s-th of `splits` ranges of time steps, and every sample, of grad_out[n, o, t] · x[n, i, t - shift(j)].
struct WeightGradArgs {
  int64_t batch = 0, in_channels = 0, out_channels = 0, length = 0, kernel_size = 1, dilation = 1, splits = 1;
  const void* grad_out = nullptr;  // (batch, out_channels, length) contiguous
  const void* x = nullptr;
  Strides3 x_strides;
  float* partial = nullptr;
  DType dtype = DType::Float32;
};

// The fused residual layer, for the CUDA kernels (forward, and the backward up to grad_h). x (N, R, T)
// and cond (N, 2R, T) any strides (cond may be a stride-0 view for global conditioning, or null);
// weights and biases contiguous, biases may be null; x_next (N, R, T) and skip (N, S, T) contiguous.
struct LayerArgs {
  int64_t batch = 0, residual = 0, skip_channels = 0, length = 0, kernel_size = 1, dilation = 1;
  float residual_scale = 1.0f;
  const void* x = nullptr;
  Strides3 x_strides;
  const void* cond = nullptr;
  Strides3 cond_strides;
  const void* conv_weight = nullptr;  // (2R, R, k)
  const void* conv_bias = nullptr;    // (2R)
  const void* res_weight = nullptr;   // (R, R)
  const void* res_bias = nullptr;     // (R)
  const void* skip_weight = nullptr;  // (S, R)
  const void* skip_bias = nullptr;    // (S)
  void* x_next = nullptr;
  void* skip = nullptr;
  // The backward's: grad_x_next (N, R, T) and grad_skip (N, S, T) contiguous in; grad_h (N, 2R, T) and
  // z (N, R, T) contiguous out.
  const void* grad_x_next = nullptr;
  const void* grad_skip = nullptr;
  void* grad_h = nullptr;
  void* z = nullptr;
  DType dtype = DType::Float32;
};

// The layer's residual output, from the 1x1 product acc = (W_res z)[c, t].
template <typename T>
GMK_HOST_DEVICE T residual_out(T x, T acc, T bias, T residual_scale) {
  return (x + acc + bias) * residual_scale;
}

// Entry points, called by causal_conv_ops.cpp (which checks the arguments). The CPU side is ATen's
// GEMMs on shifted views of the tensors (causal_conv_cpu.cpp), so it takes tensors, which this header
// only names; the CUDA kernels take the arguments above.
using Grads = std::tuple<at::Tensor, at::Tensor, at::Tensor>;
// Gradients of x, conv_weight, conv_bias, res_weight, res_bias, skip_weight, skip_bias, cond.
using LayerGrads = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor,
                              at::Tensor>;

at::Tensor conv_cpu(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                    int64_t dilation);
Grads conv_backward_cpu(const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& weight, int64_t dilation,
                        std::array<bool, 3> output_mask);
std::tuple<at::Tensor, at::Tensor> layer_cpu(const at::Tensor& x, const at::Tensor& conv_weight,
                                             const std::optional<at::Tensor>& conv_bias, const at::Tensor& res_weight,
                                             const std::optional<at::Tensor>& res_bias, const at::Tensor& skip_weight,
                                             const std::optional<at::Tensor>& skip_bias,
                                             const std::optional<at::Tensor>& cond, int64_t dilation,
                                             double residual_scale);
LayerGrads layer_backward_cpu(const at::Tensor& grad_x_next, const at::Tensor& grad_skip, const at::Tensor& x,
                              const at::Tensor& conv_weight, const std::optional<at::Tensor>& conv_bias,
                              const at::Tensor& res_weight, const at::Tensor& skip_weight,
                              const std::optional<at::Tensor>& cond, int64_t dilation, double residual_scale,
                              std::array<bool, 8> output_mask);

#if defined(GMK_WITH_CUDA)
cudaError_t conv_cuda(const ConvArgs& args, cudaStream_t stream);
cudaError_t weight_grad_cuda(const WeightGradArgs& args, cudaStream_t stream);
cudaError_t layer_cuda(const LayerArgs& args, cudaStream_t stream);
// grad_h and z of the layer's backward, from grad_x_next and grad_skip (h recomputed, never stored).
cudaError_t layer_grad_h_cuda(const LayerArgs& args, cudaStream_t stream);
// The largest R the layer kernels (backward: layer_grad_h_cuda) fit in the current device's shared memory.
cudaError_t max_layer_residual_cuda(bool backward, int64_t* max_residual);
#endif

}  // namespace gmk::causal_conv
