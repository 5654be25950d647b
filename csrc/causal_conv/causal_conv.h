// Entry points of the causal-convolution kernels, called by causal_conv_ops.cpp. Arguments are
// checked there; the CPU kernels take tensors (they are GEMMs on shifted views), the CUDA kernels
// the plain arguments of gmk/causal_conv.h.
#pragma once
#include <ATen/core/Tensor.h>

#include <array>
#include <optional>
#include <tuple>

#include "gmk/causal_conv.h"

#if defined(GMK_WITH_CUDA)
#include <cuda_runtime_api.h>
#endif

namespace gmk::causal_conv {

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
