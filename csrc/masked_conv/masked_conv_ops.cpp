// gmkernels::masked_conv2d, gmkernels::shifted_conv2d and their backward ops: argument checks and the geometry of the
// convolution (shared by both devices), then the layouts and kernels of the CPU (forward_on_cpu, backward_on_cpu) or
// the CUDA implementation (forward_on_cuda, backward_on_cuda). Autograd and fake tensors are registered in
// gmkernels/ops/masked_conv.py.
#include <ATen/Context.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <tuple>

#include "gmk/aten.h"
#include "gmk/masked_conv.h"

namespace gmk::masked_conv {
namespace {

using Grads = std::tuple<at::Tensor, at::Tensor, at::Tensor>;

// The layout of y and grad_x: x's when x is dense channels_last (and not also NCHW), else NCHW.
at::MemoryFormat layout_of(const at::Tensor& t) {
  return t.is_contiguous(at::MemoryFormat::ChannelsLast) && !t.is_contiguous() ? at::MemoryFormat::ChannelsLast
                                                                                : at::MemoryFormat::Contiguous;
}

void check_like_x(const char* op, const at::Tensor& x, const at::Tensor& t, const char* name, at::IntArrayRef sizes) {
  TORCH_CHECK_VALUE(t.sizes() == sizes, op, ": ", name, " must have shape ", sizes, ", got ", t.sizes());
  TORCH_CHECK_TYPE(t.scalar_type() == x.scalar_type(), op, ": ", name, " must have x's dtype ", x.scalar_type(),
                   ", got ", t.scalar_type());
  TORCH_CHECK_VALUE(t.device() == x.device(), op, ": ", name, " must be on x's device ", x.device(), ", got ",
                    t.device());
}

// Sizes of x (N, Cin, H, W) and weight (Cout, Cin, kh, kw); bias (Cout) if given.
Geometry conv_geometry(const char* op, const at::Tensor& x, const at::Tensor& weight,
                       const std::optional<at::Tensor>& bias) {
  TORCH_CHECK_VALUE(x.dim() == 4, op, ": x must be (N, Cin, H, W), got shape ", x.sizes());
  TORCH_CHECK_VALUE(weight.dim() == 4 && weight.size(1) == x.size(1), op, ": weight must be (Cout, Cin=", x.size(1),
                    ", kh, kw), got shape ", weight.sizes());
  check_like_x(op, x, weight, "weight", weight.sizes());
  if (bias.has_value()) check_like_x(op, x, *bias, "bias", {weight.size(0)});
  Geometry g;
  g.batch = x.size(0);
  g.in_channels = x.size(1);
  g.height = x.size(2);
  g.width = x.size(3);
  g.out_channels = weight.size(0);
  g.kernel_h = weight.size(2);
  g.kernel_w = weight.size(3);
  TORCH_CHECK_VALUE(g.kernel_h >= 1 && g.kernel_w >= 1, op, ": weight's kernel must not be empty, got ",
                    weight.sizes());
  return g;
}

Geometry masked_geometry(const char* op, const at::Tensor& x, const at::Tensor& weight,
                         const std::optional<at::Tensor>& bias, c10::string_view mask_type, int64_t color_groups) {
  Geometry g = conv_geometry(op, x, weight, bias);
  const int64_t k = g.kernel_h;
  TORCH_CHECK_VALUE(g.kernel_w == k && k % 2 == 1, op, ": weight's kernel must be k x k with k odd, got ", g.kernel_h,
                    " x ", g.kernel_w);
  TORCH_CHECK_VALUE(mask_type == "A" || mask_type == "B", op, ": mask_type must be 'A' or 'B', got '", mask_type,
                    "'");
  TORCH_CHECK_VALUE(color_groups >= 1 && g.in_channels % color_groups == 0 && g.out_channels % color_groups == 0, op,
                    ": color_groups must be a positive divisor of Cin=", g.in_channels, " and Cout=", g.out_channels,
                    ", got ", color_groups);
  g.mask = mask_type == "A" ? Mask::A : Mask::B;
  g.color_groups = color_groups;
  g.pad_top = g.pad_left = k / 2;
  // The first tap in raster order is live unless every tap is masked.
  TORCH_CHECK_VALUE(tap_is_live(g, 0, 0), op, ": mask_type 'A' with a 1x1 kernel and color_groups=1 masks every tap");
  return g;
}

Geometry shifted_geometry(const char* op, const at::Tensor& x, const at::Tensor& weight,
                          const std::optional<at::Tensor>& bias, c10::string_view shift) {
  Geometry g = conv_geometry(op, x, weight, bias);
  TORCH_CHECK_VALUE(shift == "down" || shift == "down_right", op, ": shift must be 'down' or 'down_right', got '",
                    shift, "'");
  TORCH_CHECK_VALUE(shift != "down" || g.kernel_w % 2 == 1, op,
                    ": shift 'down' needs weight's kernel width kw odd, got ", g.kernel_w);
  g.pad_top = g.kernel_h - 1;
  g.pad_left = shift == "down" ? (g.kernel_w - 1) / 2 : g.kernel_w - 1;
  return g;
}

// grad_out of the convolution of x with geometry g.
void check_grad_out(const char* op, const Geometry& g, const at::Tensor& grad_out, const at::Tensor& x) {
  check_like_x(op, x, grad_out, "grad_out", {g.batch, g.out_channels, g.height, g.width});
}

// --- CPU: GEMMs over the live taps (masked_conv_cpu.cpp), on dense NCHW or channels_last tensors ----

at::Tensor forward_on_cpu(const char* op, const Geometry& g, const at::Tensor& x, const at::Tensor& weight,
                          const std::optional<at::Tensor>& bias) {
  to_dtype(op, "x", x);
  const at::MemoryFormat layout = layout_of(x);
  const at::Tensor x_dense = x.contiguous(layout), weight_dense = weight.contiguous();
  const at::Tensor bias_dense = bias.has_value() ? bias->contiguous() : at::Tensor();
  at::Tensor y = at::empty({g.batch, g.out_channels, g.height, g.width}, x.options().memory_format(layout));
  if (y.numel() > 0) forward_cpu(g, x_dense, weight_dense, bias_dense, y);
  return y;
}

// output_mask: which of grad_x, grad_weight, grad_bias to compute; the others are undefined.
Grads backward_on_cpu(const char* op, const Geometry& g, const at::Tensor& grad_out, const at::Tensor& x,
                      const at::Tensor& weight, std::array<bool, 3> output_mask) {
  check_grad_out(op, g, grad_out, x);
  to_dtype(op, "x", x);
  const at::MemoryFormat layout = layout_of(x);
  const at::Tensor x_dense = x.contiguous(layout), weight_dense = weight.contiguous();
  const at::Tensor grad_out_dense = grad_out.contiguous(layout_of(grad_out));
  const auto [want_x, want_weight, want_bias] = output_mask;
  at::Tensor grad_x = want_x ? at::empty(x.sizes(), x.options().memory_format(layout)) : at::Tensor();
  at::Tensor grad_weight = want_weight ? at::empty(weight.sizes(), weight.options()) : at::Tensor();
  at::Tensor grad_bias = want_bias ? at::empty({g.out_channels}, weight.options()) : at::Tensor();
  if (want_x || want_weight || want_bias) {
    backward_cpu(g, grad_out_dense, x_dense, weight_dense, grad_x, grad_weight, grad_bias);
  }
  return {grad_x, grad_weight, grad_bias};
}

#if defined(GMK_WITH_CUDA)
// --- CUDA: channels_last activations, weights packed per live tap (a prefix in raster order) ------

int64_t live_taps(const Geometry& g) {
  int64_t taps = 0;
  while (taps < g.kernel_h * g.kernel_w && tap_is_live(g, taps / g.kernel_w, taps % g.kernel_w)) ++taps;
  return taps;
}

// weight (Cout, Cin, kh, kw) -> (taps, Cin, Cout), or (taps, Cout, Cin) when transposed.
at::Tensor pack_weight(const at::Tensor& weight, int64_t taps, bool transposed) {
  const at::Tensor live = weight.flatten(2).narrow(2, 0, taps);
  return (transposed ? live.permute({2, 0, 1}) : live.permute({2, 1, 0})).contiguous();
}

TapGemmArgs tap_gemm_args(const Geometry& g, DType dtype, int64_t taps, bool reflect) {
  TapGemmArgs args;
  args.geometry = g;
  args.dtype = dtype;
  args.allow_tf32 = at::globalContext().allowTF32CuDNN();
  args.reflect = reflect;
  args.live_taps = taps;
  args.reduce_channels = reflect ? g.out_channels : g.in_channels;
  args.out_channels = reflect ? g.in_channels : g.out_channels;
  return args;
}

at::Tensor forward_on_cuda(const char* op, const Geometry& g, const at::Tensor& x, const at::Tensor& weight,
                           const std::optional<at::Tensor>& bias) {
  const int64_t taps = live_taps(g);
  const at::MemoryFormat layout = layout_of(x);
  const at::Tensor a = x.contiguous(at::MemoryFormat::ChannelsLast), b = pack_weight(weight, taps, false);
  const at::Tensor bias_dense = bias.has_value() ? bias->contiguous() : at::Tensor();
  at::Tensor y = at::empty({g.batch, g.out_channels, g.height, g.width}, x.options().memory_format(layout));
  TapGemmArgs args = tap_gemm_args(g, to_dtype(op, "x", x), taps, false);
  args.out_channels_last = layout == at::MemoryFormat::ChannelsLast;
  args.a = a.const_data_ptr();
  args.b = b.const_data_ptr();
  args.bias = bias_dense.defined() ? bias_dense.const_data_ptr() : nullptr;
  args.out = y.data_ptr();
  run_cuda(op, x, y.numel(), args, tap_gemm_cuda);
  return y;
}

// Splits of the positions for the weight gradient: about four blocks per multiprocessor, each
// split at least 256 positions long.
int64_t weight_grad_splits(const Geometry& g, int64_t taps) {
  int device = 0, multiprocessors = 1;
  if (cudaGetDevice(&device) != cudaSuccess ||
      cudaDeviceGetAttribute(&multiprocessors, cudaDevAttrMultiProcessorCount, device) != cudaSuccess)
    multiprocessors = 1;
  const int64_t tiles = ((g.in_channels + 63) / 64) * ((g.out_channels + 63) / 64) * taps;
  const int64_t positions = g.batch * g.height * g.width;
  const int64_t wanted = (4 * int64_t(multiprocessors) + tiles - 1) / tiles;
  return std::max<int64_t>(1, std::min({wanted, (positions + 255) / 256, int64_t(65535) / taps}));
}

Grads backward_on_cuda(const char* op, const Geometry& g, const at::Tensor& grad_out, const at::Tensor& x,
                       const at::Tensor& weight, std::array<bool, 3> output_mask) {
  check_grad_out(op, g, grad_out, x);
  const DType dtype = to_dtype(op, "x", x);
  const auto [want_x, want_weight, want_bias] = output_mask;
  const int64_t taps = live_taps(g), positions = g.batch * g.height * g.width;
  const at::Tensor go = grad_out.contiguous(at::MemoryFormat::ChannelsLast);
  at::Tensor grad_x, grad_weight, grad_bias;
  if (want_x) {
    const at::MemoryFormat layout = layout_of(x);
    const at::Tensor b = pack_weight(weight, taps, true);
    grad_x = at::empty(x.sizes(), x.options().memory_format(layout));
    TapGemmArgs args = tap_gemm_args(g, dtype, taps, true);
    args.out_channels_last = layout == at::MemoryFormat::ChannelsLast;
    args.a = go.const_data_ptr();
    args.b = b.const_data_ptr();
    args.out = grad_x.data_ptr();
    run_cuda(op, x, grad_x.numel(), args, tap_gemm_cuda);
  }
  if (want_weight) {
    const at::Tensor x_cl = x.contiguous(at::MemoryFormat::ChannelsLast);
    const int64_t splits = weight_grad_splits(g, taps);
    const auto float_options = weight.options().dtype(at::kFloat);
    at::Tensor partial = positions > 0 ? at::empty({splits, taps, g.in_channels, g.out_channels}, float_options)
                                       : at::zeros({splits, taps, g.in_channels, g.out_channels}, float_options);
    WeightGradArgs args;
    args.geometry = g;
    args.dtype = dtype;
    args.allow_tf32 = at::globalContext().allowTF32CuDNN();
    args.live_taps = taps;
    args.splits = splits;
    args.positions_per_split = (positions + splits - 1) / splits;
    args.x = x_cl.const_data_ptr();
    args.grad_out = go.const_data_ptr();
    args.partial = partial.data_ptr<float>();
    run_cuda(op, x, positions * partial.numel(), args, weight_grad_cuda);
    grad_weight = at::zeros(weight.sizes(), weight.options());
    grad_weight.flatten(2).narrow(2, 0, taps).copy_(partial.sum(0).permute({2, 1, 0}));
  }
  if (want_bias) grad_bias = grad_out.sum({0, 2, 3}, false, at::kFloat).to(weight.scalar_type());
  return {grad_x, grad_weight, grad_bias};
}
#endif

constexpr const char* kMasked = "gmkernels::masked_conv2d";
constexpr const char* kMaskedBackward = "gmkernels::masked_conv2d_backward";
constexpr const char* kShifted = "gmkernels::shifted_conv2d";
constexpr const char* kShiftedBackward = "gmkernels::shifted_conv2d_backward";

at::Tensor masked_conv2d_on_cpu(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                            c10::string_view mask_type, int64_t color_groups) {
  const Geometry g = masked_geometry(kMasked, x, weight, bias, mask_type, color_groups);
  return forward_on_cpu(kMasked, g, x, weight, bias);
}

Grads masked_conv2d_backward_on_cpu(const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& weight,
                                 c10::string_view mask_type, int64_t color_groups, std::array<bool, 3> output_mask) {
  const Geometry g = masked_geometry(kMaskedBackward, x, weight, std::nullopt, mask_type, color_groups);
  return backward_on_cpu(kMaskedBackward, g, grad_out, x, weight, output_mask);
}

at::Tensor shifted_conv2d_on_cpu(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                             c10::string_view shift) {
  return forward_on_cpu(kShifted, shifted_geometry(kShifted, x, weight, bias, shift), x, weight, bias);
}

Grads shifted_conv2d_backward_on_cpu(const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& weight,
                                  c10::string_view shift, std::array<bool, 3> output_mask) {
  const Geometry g = shifted_geometry(kShiftedBackward, x, weight, std::nullopt, shift);
  return backward_on_cpu(kShiftedBackward, g, grad_out, x, weight, output_mask);
}

#if defined(GMK_WITH_CUDA)
at::Tensor masked_conv2d_on_cuda(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                            c10::string_view mask_type, int64_t color_groups) {
  const Geometry g = masked_geometry(kMasked, x, weight, bias, mask_type, color_groups);
  return forward_on_cuda(kMasked, g, x, weight, bias);
}

Grads masked_conv2d_backward_on_cuda(const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& weight,
                                 c10::string_view mask_type, int64_t color_groups, std::array<bool, 3> output_mask) {
  const Geometry g = masked_geometry(kMaskedBackward, x, weight, std::nullopt, mask_type, color_groups);
  return backward_on_cuda(kMaskedBackward, g, grad_out, x, weight, output_mask);
}

at::Tensor shifted_conv2d_on_cuda(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                             c10::string_view shift) {
  return forward_on_cuda(kShifted, shifted_geometry(kShifted, x, weight, bias, shift), x, weight, bias);
}

Grads shifted_conv2d_backward_on_cuda(const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& weight,
                                  c10::string_view shift, std::array<bool, 3> output_mask) {
  const Geometry g = shifted_geometry(kShiftedBackward, x, weight, std::nullopt, shift);
  return backward_on_cuda(kShiftedBackward, g, grad_out, x, weight, output_mask);
}
#endif

}  // namespace

TORCH_LIBRARY_IMPL(gmkernels, CPU, m) {
  m.impl("masked_conv2d", &masked_conv2d_on_cpu);
  m.impl("masked_conv2d_backward", &masked_conv2d_backward_on_cpu);
  m.impl("shifted_conv2d", &shifted_conv2d_on_cpu);
  m.impl("shifted_conv2d_backward", &shifted_conv2d_backward_on_cpu);
}

#if defined(GMK_WITH_CUDA)
TORCH_LIBRARY_IMPL(gmkernels, CUDA, m) {
  m.impl("masked_conv2d", &masked_conv2d_on_cuda);
  m.impl("masked_conv2d_backward", &masked_conv2d_backward_on_cuda);
  m.impl("shifted_conv2d", &shifted_conv2d_on_cuda);
  m.impl("shifted_conv2d_backward", &shifted_conv2d_backward_on_cuda);
}
#endif

}  // namespace gmk::masked_conv
