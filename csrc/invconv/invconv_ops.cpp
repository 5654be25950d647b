// gmkernels::conv1x1 and gmkernels::conv1x1_backward: argument checks, then on CPU the batched GEMM, on CUDA the kernel
// (weight in shared memory, x streamed once) or, for float64 or a weight that does not fit in shared memory, the
// batched GEMM (cuBLAS). The backward's body is shared by both devices. The invertible 1x1 convolutions and their
// fusion with actnorm (gmkernels/ops/invconv.py) build weight and bias from their parameters and call these ops.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/matmul.h>
#include <torch/library.h>

#include <array>
#include <optional>
#include <tuple>

#include "gmk/aten.h"
#include "gmk/invconv.h"

namespace gmk::invconv {
namespace {

constexpr const char* kOp = "gmkernels::conv1x1";

using Grads = std::tuple<at::Tensor, at::Tensor, at::Tensor>;

at::ScalarType compute_type(const at::Tensor& x) {
  return x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

void check_like_parameter(const at::Tensor& x, const at::Tensor& p, const char* name) {
  TORCH_CHECK_TYPE(p.scalar_type() == compute_type(x), kOp, ": ", name, " must be ", compute_type(x),
                   " for x of dtype ", x.scalar_type(), ", got ", p.scalar_type());
  TORCH_CHECK_VALUE(p.device() == x.device(), kOp, ": ", name, " must be on x's device ", x.device(), ", got ",
                    p.device());
}

void check_args(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias) {
  TORCH_CHECK_VALUE(x.dim() == 3, kOp, ": x must be (N, C, positions), got shape ", x.sizes());
  to_dtype(kOp, "x", x);
  TORCH_CHECK_VALUE(weight.dim() == 2 && weight.size(1) == x.size(1), kOp, ": weight must be (Cout, C=",
                    x.size(1), "), got shape ", weight.sizes());
  check_like_parameter(x, weight, "weight");
  if (bias.has_value()) {
    TORCH_CHECK_VALUE(bias->dim() == 1 && bias->size(0) == weight.size(0), kOp, ": bias must have shape (",
                      weight.size(0), "), got ", bias->sizes());
    check_like_parameter(x, *bias, "bias");
  }
}

Strides3 strides_of(const at::Tensor& t) {
  return {t.size(0) == 1 ? 0 : t.stride(0), t.stride(1), t.size(2) == 1 ? 1 : t.stride(2)};
}

at::Tensor conv1x1_on_cpu(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias) {
  check_args(x, weight, bias);
  return conv1x1_gemm(x, weight, bias);
}

#if defined(GMK_WITH_CUDA)
at::Tensor conv1x1_on_cuda(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias) {
  check_args(x, weight, bias);
  if (x.scalar_type() == at::kDouble || !conv1x1_cuda_fits(weight.size(1), weight.size(0))) {
    return conv1x1_gemm(x, weight, bias);
  }
  const at::Tensor weight_dense = weight.contiguous();
  const std::optional<at::Tensor> bias_dense = bias.has_value() ? std::optional(bias->contiguous()) : std::nullopt;
  Args args;
  args.dtype = to_dtype(kOp, "x", x);
  args.outer = x.size(0);
  args.in_channels = x.size(1);
  args.out_channels = weight.size(0);
  args.inner = x.size(2);
  args.x = x.data_ptr();
  args.x_strides = strides_of(x);
  args.weight = weight_dense.data_ptr<float>();
  args.bias = bias_dense.has_value() ? bias_dense->data_ptr<float>() : nullptr;
  at::Tensor y = at::empty({args.outer, args.out_channels, args.inner}, x.options());
  args.out = y.data_ptr();
  run_cuda(kOp, x, y.numel(), args, conv1x1_cuda);
  return y;
}
#endif

// grad_x = weightᵀ · grad_y (the same kernel), grad_weight = Σ_samples grad_y · xᵀ (a batched GEMM),
// grad_bias = Σ grad_y, the latter two in the weight's dtype; conv1x1 is the device's forward.
template <typename Conv1x1>
Grads conv1x1_backward(const at::Tensor& grad_y, const at::Tensor& x, const at::Tensor& weight,
                       std::array<bool, 3> output_mask, Conv1x1 conv1x1) {
  check_args(x, weight, std::nullopt);
  TORCH_CHECK_VALUE(grad_y.dim() == 3 && grad_y.size(0) == x.size(0) && grad_y.size(1) == weight.size(0) &&
                        grad_y.size(2) == x.size(2),
                    kOp, ": grad_y must have shape (", x.size(0), ", ", weight.size(0), ", ", x.size(2), "), got ",
                    grad_y.sizes());
  TORCH_CHECK_TYPE(grad_y.scalar_type() == x.scalar_type(), kOp, ": grad_y must have x's dtype ",
                   x.scalar_type(), ", got ", grad_y.scalar_type());
  TORCH_CHECK_VALUE(grad_y.device() == x.device(), kOp, ": grad_y must be on x's device ", x.device(),
                    ", got ", grad_y.device());
  at::Tensor grad_x, grad_weight, grad_bias;
  if (output_mask[0]) grad_x = conv1x1(grad_y, weight.t(), std::nullopt);
  if (output_mask[1] || output_mask[2]) {
    const at::Tensor grad_wide = grad_y.to(weight.scalar_type());
    if (output_mask[1]) grad_weight = at::matmul(grad_wide, x.to(weight.scalar_type()).transpose(1, 2)).sum(0);
    if (output_mask[2]) grad_bias = grad_wide.sum(at::IntArrayRef{0, 2});
  }
  return {grad_x, grad_weight, grad_bias};
}

Grads conv1x1_backward_on_cpu(const at::Tensor& grad_y, const at::Tensor& x, const at::Tensor& weight,
                              std::array<bool, 3> output_mask) {
  return conv1x1_backward(grad_y, x, weight, output_mask, conv1x1_on_cpu);
}

#if defined(GMK_WITH_CUDA)
Grads conv1x1_backward_on_cuda(const at::Tensor& grad_y, const at::Tensor& x, const at::Tensor& weight,
                               std::array<bool, 3> output_mask) {
  return conv1x1_backward(grad_y, x, weight, output_mask, conv1x1_on_cuda);
}
#endif

}  // namespace

TORCH_LIBRARY_IMPL(gmkernels, CPU, m) {
  m.impl("conv1x1", &conv1x1_on_cpu);
  m.impl("conv1x1_backward", &conv1x1_backward_on_cpu);
}

#if defined(GMK_WITH_CUDA)
TORCH_LIBRARY_IMPL(gmkernels, CUDA, m) {
  m.impl("conv1x1", &conv1x1_on_cuda);
  m.impl("conv1x1_backward", &conv1x1_backward_on_cuda);
}
#endif

}  // namespace gmk::invconv
