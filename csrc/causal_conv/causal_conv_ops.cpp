// gmkernels::causal_conv1d, causal_conv1d_backward, wavenet_layer and wavenet_layer_backward: one check
// function per op shared by the CPU implementation (ATen GEMMs, causal_conv_cpu.cpp) and the CUDA one
// (the kernels, fed from here). Autograd and fake tensors are registered in gmkernels/ops/causal_conv.py.
#include <cmath>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <limits>
#include <tuple>

#include "gmk/causal_conv.h"
#include "gmk/aten.h"

namespace gmk::causal_conv {
namespace {

constexpr const char* kConv = "gmkernels::causal_conv1d";
constexpr const char* kConvBackward = "gmkernels::causal_conv1d_backward";
constexpr const char* kLayer = "gmkernels::wavenet_layer";
constexpr const char* kLayerBackward = "gmkernels::wavenet_layer_backward";
constexpr int64_t kMaxCudaResidual = 512;

void check_like_x(const char* op, const at::Tensor& x, const at::Tensor& t, const char* name, at::IntArrayRef sizes) {
  TORCH_CHECK_VALUE(t.sizes() == sizes, op, ": ", name, " must have shape ", sizes, ", got ", t.sizes());
  TORCH_CHECK_TYPE(t.scalar_type() == x.scalar_type(), op, ": ", name, " must have x's dtype ", x.scalar_type(),
                   ", got ", t.scalar_type());
  TORCH_CHECK_VALUE(t.device() == x.device(), op, ": ", name, " must be on x's device ", x.device(), ", got ",
                    t.device());
}

// x (N, Cin, T), weight (Cout, Cin, k >= 1), bias (Cout), dilation >= 1.
void check_conv(const char* op, const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                int64_t dilation, const char* weight_name = "weight", const char* bias_name = "bias") {
  to_dtype(op, "x", x);
  TORCH_CHECK_VALUE(x.dim() == 3, op, ": x must be (N, Cin, T), got shape ", x.sizes());
  TORCH_CHECK_VALUE(weight.dim() == 3 && weight.size(1) == x.size(1) && weight.size(2) >= 1, op, ": ", weight_name,
                    " must be (Cout, Cin=", x.size(1), ", k >= 1), got shape ", weight.sizes());
  check_like_x(op, x, weight, weight_name, weight.sizes());
  if (bias.has_value()) check_like_x(op, x, *bias, bias_name, {weight.size(0)});
  TORCH_CHECK_VALUE(dilation >= 1, op, ": dilation must be >= 1, got ", dilation);
  const int64_t steps = weight.size(2) - 1;  // the first tap's reach (k-1)·dilation must fit in 64 bits
  TORCH_CHECK_VALUE(steps == 0 || dilation <= std::numeric_limits<int64_t>::max() / steps, op, ": dilation=",
                    dilation, " with kernel size k=", weight.size(2),
                    " reaches back (k-1)·dilation, more than 64-bit offsets hold (2^63 - 1)");
}

// grad_out (N, Cout, T) of the convolution of x (N, Cin, T) with weight (Cout, Cin, k).
void check_conv_backward(const char* op, const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& weight,
                         int64_t dilation) {
  check_conv(op, x, weight, std::nullopt, dilation);
  check_like_x(op, x, grad_out, "grad_out", {x.size(0), weight.size(0), x.size(2)});
}

// The layer's shapes: x (N, R, T), conv_weight (2R, R, k), res_weight (R, R), skip_weight (S, R), the
// biases (2R), (R), (S) and cond (N, 2R, T) where given.
void check_layer(const char* op, const at::Tensor& x, const at::Tensor& conv_weight,
                 const std::optional<at::Tensor>& conv_bias, const at::Tensor& res_weight,
                 const std::optional<at::Tensor>& res_bias, const at::Tensor& skip_weight,
                 const std::optional<at::Tensor>& skip_bias, const std::optional<at::Tensor>& cond, int64_t dilation) {
  check_conv(op, x, conv_weight, conv_bias, dilation, "conv_weight", "conv_bias");
  const int64_t n = x.size(0), r = x.size(1), t = x.size(2);
  TORCH_CHECK_VALUE(conv_weight.size(0) == 2 * r, op, ": conv_weight must be (2R=", 2 * r, ", R=", r,
                    ", k), got shape ", conv_weight.sizes());
  check_like_x(op, x, res_weight, "res_weight", {r, r});
  if (res_bias.has_value()) check_like_x(op, x, *res_bias, "res_bias", {r});
  TORCH_CHECK_VALUE(skip_weight.dim() == 2 && skip_weight.size(1) == r && skip_weight.size(0) >= 1, op,
                    ": skip_weight must be (S >= 1, R=", r, "), got shape ", skip_weight.sizes());
  check_like_x(op, x, skip_weight, "skip_weight", skip_weight.sizes());
  if (skip_bias.has_value()) check_like_x(op, x, *skip_bias, "skip_bias", {skip_weight.size(0)});
  if (cond.has_value()) check_like_x(op, x, *cond, "cond", {n, 2 * r, t});
}

void check_residual_scale(const char* op, double residual_scale) {
  TORCH_CHECK_VALUE(std::isfinite(residual_scale), op, ": residual_scale must be a finite number, got ",
                    residual_scale);
}

// The layer's backward: the forward's operands (no output biases) and grad_x_next, grad_skip.
void check_layer_backward(const at::Tensor& grad_x_next, const at::Tensor& grad_skip, const at::Tensor& x,
                          const at::Tensor& conv_weight, const std::optional<at::Tensor>& conv_bias,
                          const at::Tensor& res_weight, const at::Tensor& skip_weight,
                          const std::optional<at::Tensor>& cond, int64_t dilation) {
  check_layer(kLayerBackward, x, conv_weight, conv_bias, res_weight, std::nullopt, skip_weight, std::nullopt, cond,
              dilation);
  check_like_x(kLayerBackward, x, grad_x_next, "grad_x_next", x.sizes());
  check_like_x(kLayerBackward, x, grad_skip, "grad_skip", {x.size(0), skip_weight.size(0), x.size(2)});
}

at::Tensor causal_conv1d_on_cpu(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                                int64_t dilation) {
  check_conv(kConv, x, weight, bias, dilation);
  return conv_cpu(x, weight, bias, dilation);
}

Grads causal_conv1d_backward_on_cpu(const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& weight,
                                    int64_t dilation, std::array<bool, 3> output_mask) {
  check_conv_backward(kConvBackward, grad_out, x, weight, dilation);
  return conv_backward_cpu(grad_out, x, weight, dilation, output_mask);
}

std::tuple<at::Tensor, at::Tensor> wavenet_layer_on_cpu(
    const at::Tensor& x, const at::Tensor& conv_weight, const std::optional<at::Tensor>& conv_bias,
    const at::Tensor& res_weight, const std::optional<at::Tensor>& res_bias, const at::Tensor& skip_weight,
    const std::optional<at::Tensor>& skip_bias, const std::optional<at::Tensor>& cond, int64_t dilation,
    double residual_scale) {
  check_layer(kLayer, x, conv_weight, conv_bias, res_weight, res_bias, skip_weight, skip_bias, cond, dilation);
  check_residual_scale(kLayer, residual_scale);
  return layer_cpu(x, conv_weight, conv_bias, res_weight, res_bias, skip_weight, skip_bias, cond, dilation,
                   residual_scale);
}

LayerGrads wavenet_layer_backward_on_cpu(const at::Tensor& grad_x_next, const at::Tensor& grad_skip,
                                         const at::Tensor& x, const at::Tensor& conv_weight,
                                         const std::optional<at::Tensor>& conv_bias, const at::Tensor& res_weight,
                                         const at::Tensor& skip_weight, const std::optional<at::Tensor>& cond,
                                         int64_t dilation, double residual_scale, std::array<bool, 8> output_mask) {
  check_layer_backward(grad_x_next, grad_skip, x, conv_weight, conv_bias, res_weight, skip_weight, cond, dilation);
  check_residual_scale(kLayerBackward, residual_scale);
  return layer_backward_cpu(grad_x_next, grad_skip, x, conv_weight, conv_bias, res_weight, skip_weight, cond,
                            dilation, residual_scale, output_mask);
}

#if defined(GMK_WITH_CUDA)
Strides3 strides_of(const at::Tensor& t) {  // size-1 dimensions get stride 0: never stepped over
  const auto stride = [&](int64_t d) { return t.size(d) == 1 ? int64_t{0} : t.stride(d); };
  return {stride(0), stride(1), stride(2)};
}

const void* data_or_null(const at::Tensor& t) { return t.defined() ? t.const_data_ptr() : nullptr; }

at::Tensor contiguous_or_undefined(const std::optional<at::Tensor>& t) {
  return t.has_value() ? t->contiguous() : at::Tensor();
}

// out (N, Cout, T) = the causal convolution (sign -1) or its grad_x (sign +1) of `in` with `weight`
// seen as (Cout, Cin, k) through the given strides.
void conv_on_cuda(const char* op, const at::Tensor& in, const at::Tensor& weight, int64_t w_out, int64_t w_in,
                  int64_t out_channels, const at::Tensor& bias, int64_t dilation, int sign, at::Tensor& out) {
  ConvArgs args;
  args.batch = in.size(0);
  args.in_channels = in.size(1);
  args.out_channels = out_channels;
  args.length = in.size(2);
  args.kernel_size = weight.size(2);
  args.dilation = dilation;
  args.sign = sign;
  args.in = in.const_data_ptr();
  args.in_strides = strides_of(in);
  args.weight = weight.const_data_ptr();
  args.w_out_stride = weight.stride(w_out);
  args.w_in_stride = weight.stride(w_in);
  args.w_tap_stride = weight.stride(2);
  args.bias = data_or_null(bias);
  args.out = out.data_ptr();
  args.dtype = to_dtype(op, "x", in);
  run_cuda(op, in, out.numel(), args, conv_cuda);
}

// The CUDA layer kernels keep a block's h (2R x 32 floats, the backward) or z (R x 32) in shared memory:
// R is bounded by kMaxCudaResidual and by the shared memory of x's device.
void check_cuda_layer(const char* op, const at::Tensor& x, bool backward) {
  int64_t max_residual = kMaxCudaResidual, device_max = 0;
  const c10::cuda::CUDAGuard guard(x.device());
  if (max_layer_residual_cuda(backward, &device_max) == cudaSuccess) max_residual = std::min(max_residual, device_max);
  TORCH_CHECK_VALUE(x.size(1) <= max_residual, op, ": the CUDA kernels take R <= ", max_residual,
                    " residual channels (x.shape[1]) on this GPU (shared memory per block), got ", x.size(1),
                    "; use backend 'triton'");
}

// The arguments common to the layer kernels; the tensors must outlive the launch.
LayerArgs layer_args(const char* op, const at::Tensor& x, const at::Tensor& cw, const at::Tensor& cb,
                     const at::Tensor& rw, const at::Tensor& sw, const std::optional<at::Tensor>& cond,
                     int64_t dilation, double residual_scale) {
  check_residual_scale(op, residual_scale);
  LayerArgs args;
  args.batch = x.size(0);
  args.residual = x.size(1);
  args.skip_channels = sw.size(0);
  args.length = x.size(2);
  args.kernel_size = cw.size(2);
  args.dilation = dilation;
  args.residual_scale = static_cast<float>(residual_scale);
  args.x = x.const_data_ptr();
  args.x_strides = strides_of(x);
  if (cond.has_value()) {
    args.cond = cond->const_data_ptr();
    args.cond_strides = strides_of(*cond);
  }
  args.conv_weight = cw.const_data_ptr();
  args.conv_bias = data_or_null(cb);
  args.res_weight = rw.const_data_ptr();
  args.skip_weight = sw.const_data_ptr();
  args.dtype = to_dtype(op, "x", x);
  return args;
}

// scale * sum_n sum_t g[n, o, t] in[n, i, t - (k-1-j) d] as (Cout, Cin, k) of `dtype`: float32 partial
// sums over ranges of time steps, then their sum. g contiguous.
at::Tensor weight_grad_on_cuda(const char* op, const at::Tensor& g, const at::Tensor& in, int64_t kernel_size,
                               int64_t dilation, double scale, at::ScalarType dtype) {
  WeightGradArgs args;
  args.batch = in.size(0);
  args.in_channels = in.size(1);
  args.out_channels = g.size(1);
  args.length = in.size(2);
  args.kernel_size = kernel_size;
  args.dilation = dilation;
  args.splits = std::clamp<int64_t>(args.batch * args.length / 4096, 1, 64);
  at::Tensor partial = at::zeros({args.splits, args.out_channels, args.in_channels, kernel_size},
                                 in.options().dtype(at::kFloat));
  args.grad_out = g.const_data_ptr();
  args.x = in.const_data_ptr();
  args.x_strides = strides_of(in);
  args.partial = partial.data_ptr<float>();
  args.dtype = to_dtype(op, "x", in);
  run_cuda(op, in, partial.numel(), args, weight_grad_cuda);
  return partial.sum(0).mul_(scale).to(dtype);
}

at::Tensor causal_conv1d_on_cuda(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                                 int64_t dilation) {
  check_conv(kConv, x, weight, bias, dilation);
  at::Tensor y = at::empty({x.size(0), weight.size(0), x.size(2)}, x.options());
  conv_on_cuda(kConv, x, weight.contiguous(), 0, 1, weight.size(0), contiguous_or_undefined(bias), dilation, -1, y);
  return y;
}

Grads causal_conv1d_backward_on_cuda(const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& weight,
                                     int64_t dilation, std::array<bool, 3> output_mask) {
  check_conv_backward(kConvBackward, grad_out, x, weight, dilation);
  const auto [want_x, want_weight, want_bias] = output_mask;
  const at::Tensor g = grad_out.contiguous(), w = weight.contiguous();
  at::Tensor grad_x, grad_weight, grad_bias;
  if (want_x) {  // the mirrored convolution of grad_out with W seen as (Cin, Cout, k)
    grad_x = at::empty(x.sizes(), x.options());
    conv_on_cuda(kConvBackward, g, w, 1, 0, x.size(1), at::Tensor(), dilation, +1, grad_x);
  }
  if (want_weight) grad_weight = weight_grad_on_cuda(kConvBackward, g, x, weight.size(2), dilation, 1.0,
                                                    weight.scalar_type());
  if (want_bias) grad_bias = g.sum({0, 2}, false, at::kFloat).to(weight.scalar_type());
  return {grad_x, grad_weight, grad_bias};
}

std::tuple<at::Tensor, at::Tensor> wavenet_layer_on_cuda(
    const at::Tensor& x, const at::Tensor& conv_weight, const std::optional<at::Tensor>& conv_bias,
    const at::Tensor& res_weight, const std::optional<at::Tensor>& res_bias, const at::Tensor& skip_weight,
    const std::optional<at::Tensor>& skip_bias, const std::optional<at::Tensor>& cond, int64_t dilation,
    double residual_scale) {
  check_layer(kLayer, x, conv_weight, conv_bias, res_weight, res_bias, skip_weight, skip_bias, cond, dilation);
  check_cuda_layer(kLayer, x, false);
  const at::Tensor cw = conv_weight.contiguous(), rw = res_weight.contiguous(), sw = skip_weight.contiguous();
  const at::Tensor cb = contiguous_or_undefined(conv_bias), rb = contiguous_or_undefined(res_bias);
  const at::Tensor sb = contiguous_or_undefined(skip_bias);
  at::Tensor x_next = at::empty(x.sizes(), x.options());
  at::Tensor skip = at::empty({x.size(0), skip_weight.size(0), x.size(2)}, x.options());
  if (x.size(1) == 0) {  // z has no channel: skip is skip_bias alone (x_next is empty, no kernel runs)
    if (sb.defined()) {
      skip.copy_(sb.view({1, -1, 1}));
    } else {
      skip.zero_();
    }
    return {x_next, skip};
  }
  LayerArgs args = layer_args(kLayer, x, cw, cb, rw, sw, cond, dilation, residual_scale);
  args.res_bias = data_or_null(rb);
  args.skip_bias = data_or_null(sb);
  args.x_next = x_next.data_ptr();
  args.skip = skip.data_ptr();
  run_cuda(kLayer, x, x_next.numel(), args, layer_cuda);
  return {x_next, skip};
}

LayerGrads wavenet_layer_backward_on_cuda(const at::Tensor& grad_x_next, const at::Tensor& grad_skip,
                                          const at::Tensor& x, const at::Tensor& conv_weight,
                                          const std::optional<at::Tensor>& conv_bias, const at::Tensor& res_weight,
                                          const at::Tensor& skip_weight, const std::optional<at::Tensor>& cond,
                                          int64_t dilation, double residual_scale, std::array<bool, 8> output_mask) {
  check_layer_backward(grad_x_next, grad_skip, x, conv_weight, conv_bias, res_weight, skip_weight, cond, dilation);
  check_cuda_layer(kLayerBackward, x, true);
  const char* op = kLayerBackward;
  const int64_t n = x.size(0), r = x.size(1), t = x.size(2), k = conv_weight.size(2);
  const at::Tensor cw = conv_weight.contiguous(), rw = res_weight.contiguous(), sw = skip_weight.contiguous();
  const at::Tensor cb = contiguous_or_undefined(conv_bias);
  const at::Tensor g_res = grad_x_next.contiguous(), g_skip = grad_skip.contiguous();
  at::Tensor grad_h = at::empty({n, 2 * r, t}, x.options()), z = at::empty({n, r, t}, x.options());
  LayerArgs args = layer_args(op, x, cw, cb, rw, sw, cond, dilation, residual_scale);
  args.grad_x_next = g_res.const_data_ptr();
  args.grad_skip = g_skip.const_data_ptr();
  args.grad_h = grad_h.data_ptr();
  args.z = z.data_ptr();
  run_cuda(op, x, grad_h.numel(), args, layer_grad_h_cuda);

  const auto [want_x, want_w, want_b, want_rw, want_rb, want_sw, want_sb, want_cond] = output_mask;
  const at::ScalarType dtype = x.scalar_type();
  LayerGrads grads;
  auto& [grad_x, grad_w, grad_b, grad_rw, grad_rb, grad_sw, grad_sb, grad_cond] = grads;
  if (want_x) {  // the mirrored convolution of grad_h, plus the residual path
    grad_x = at::empty(x.sizes(), x.options());
    conv_on_cuda(op, grad_h, cw, 1, 0, r, at::Tensor(), dilation, +1, grad_x);
    grad_x.add_(g_res, residual_scale);
  }
  if (want_w) grad_w = weight_grad_on_cuda(op, grad_h, x, k, dilation, 1.0, dtype);
  if (want_b && conv_bias.has_value()) grad_b = grad_h.sum({0, 2}, false, at::kFloat).to(dtype);
  // The 1x1s' gradients: convolutions with k = 1 of z.
  if (want_rw) grad_rw = weight_grad_on_cuda(op, g_res, z, 1, 1, residual_scale, dtype).squeeze(2);
  if (want_rb) grad_rb = g_res.sum({0, 2}, false, at::kFloat).mul_(residual_scale).to(dtype);
  if (want_sw) grad_sw = weight_grad_on_cuda(op, g_skip, z, 1, 1, 1.0, dtype).squeeze(2);
  if (want_sb) grad_sb = g_skip.sum({0, 2}, false, at::kFloat).to(dtype);
  if (want_cond && cond.has_value()) grad_cond = grad_h;
  return grads;
}
#endif

}  // namespace

TORCH_LIBRARY_IMPL(gmkernels, CPU, m) {
  m.impl("causal_conv1d", &causal_conv1d_on_cpu);
  m.impl("causal_conv1d_backward", &causal_conv1d_backward_on_cpu);
  m.impl("wavenet_layer", &wavenet_layer_on_cpu);
  m.impl("wavenet_layer_backward", &wavenet_layer_backward_on_cpu);
}

#if defined(GMK_WITH_CUDA)
TORCH_LIBRARY_IMPL(gmkernels, CUDA, m) {
  m.impl("causal_conv1d", &causal_conv1d_on_cuda);
  m.impl("causal_conv1d_backward", &causal_conv1d_backward_on_cuda);
  m.impl("wavenet_layer", &wavenet_layer_on_cuda);
  m.impl("wavenet_layer_backward", &wavenet_layer_backward_on_cuda);
}
#endif

}  // namespace gmk::causal_conv
