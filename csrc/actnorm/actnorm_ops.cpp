// gmkernels::actnorm and gmkernels::actnorm_backward: one body per op (argument checks, Args, outputs)
// shared by the CPU and the CUDA implementation, which differ in the kernel they launch and, backward,
// in the partial sums it writes. The log-determinant, autograd and fake tensors are in gmkernels/ops/actnorm.py.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/TensorOperators.h>
#include <ATen/ops/exp.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <tuple>

#include "gmk/actnorm.h"
#include "gmk/aten.h"

namespace gmk::actnorm {
namespace {

constexpr const char* kOp = "gmkernels::actnorm";

using Grads = std::tuple<at::Tensor, at::Tensor, at::Tensor>;

Strides3 strides_of(const at::Tensor& t) {
  return {t.size(0) == 1 ? 0 : t.stride(0), t.stride(1), t.size(2) == 1 ? 1 : t.stride(2)};
}

// The parameters' dtype: float for float32/16 and bfloat16 tensors, double for float64.
at::ScalarType compute_type(const at::Tensor& x) {
  return x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

void check_parameter(const at::Tensor& x, const at::Tensor& p, const char* name) {
  TORCH_CHECK_VALUE(p.dim() == 1 && p.size(0) == x.size(1), kOp, ": ", name, " must have shape (",
                    x.size(1), "), got ", p.sizes());
  TORCH_CHECK_TYPE(p.scalar_type() == compute_type(x), kOp, ": ", name, " must be ", compute_type(x),
                   " for x of dtype ", x.scalar_type(), ", got ", p.scalar_type());
  TORCH_CHECK_VALUE(p.device() == x.device(), kOp, ": ", name, " must be on x's device ", x.device(), ", got ",
                    p.device());
}

Args make_args(const at::Tensor& in, const at::Tensor& bias, const at::Tensor& log_scale, bool reverse,
               at::Tensor& bias_dense, at::Tensor& log_scale_dense) {
  TORCH_CHECK_VALUE(in.dim() == 3, kOp, ": x must be (N, C, positions), got shape ", in.sizes());
  Args args;
  args.dtype = to_dtype(kOp, "x", in);
  check_parameter(in, bias, "bias");
  check_parameter(in, log_scale, "log_scale");
  bias_dense = bias.contiguous();
  log_scale_dense = log_scale.contiguous();
  args.outer = in.size(0);
  args.channels = in.size(1);
  args.inner = in.size(2);
  args.in = in.data_ptr();
  args.in_strides = strides_of(in);
  args.bias = bias_dense.data_ptr();
  args.log_scale = log_scale_dense.data_ptr();
  args.reverse = reverse;
  return args;
}

template <typename Launch>
at::Tensor actnorm(const at::Tensor& x, const at::Tensor& bias, const at::Tensor& log_scale, bool reverse,
                   Launch launch) {
  at::Tensor bias_dense, log_scale_dense;
  Args args = make_args(x, bias, log_scale, reverse, bias_dense, log_scale_dense);
  at::Tensor out = at::empty(x.sizes(), x.options());
  args.out = out.data_ptr();
  launch(x.numel(), args);
  return out;
}

// Gradients with respect to in, bias and log_scale of out = (in + b) e^s, reverse in e^{-s} - b, from
// G = sum(grad_out) and H = sum(grad_out * in) per channel: forward d/db = e^s G,
// d/dlog_s = e^s (H + b G); reverse d/db = -G, d/dlog_s = -e^{-s} H. The kernel writes G and H as
// sum_type partial sums, parts(outer, channels, inner) per channel.
template <typename Parts, typename Launch>
Grads actnorm_backward(const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& bias,
                       const at::Tensor& log_scale, bool reverse, at::ScalarType sum_type, Parts parts,
                       Launch launch) {
  at::Tensor bias_dense, log_scale_dense;
  Args args = make_args(x, bias, log_scale, reverse, bias_dense, log_scale_dense);
  TORCH_CHECK_VALUE(grad_out.sizes() == x.sizes(), kOp, ": grad_out must have x's shape ", x.sizes(), ", got ",
                    grad_out.sizes());
  TORCH_CHECK_TYPE(grad_out.scalar_type() == x.scalar_type(), kOp, ": grad_out must have x's dtype ",
                   x.scalar_type(), ", got ", grad_out.scalar_type());
  TORCH_CHECK_VALUE(grad_out.device() == x.device(), kOp, ": grad_out must be on x's device ", x.device(),
                    ", got ", grad_out.device());
  const at::Tensor grad_dense = grad_out.contiguous();
  at::Tensor grad_in = at::empty(x.sizes(), x.options());
  args.grad_out = grad_dense.data_ptr();
  args.out = grad_in.data_ptr();
  args.parts = parts(args.outer, args.channels, args.inner);
  at::Tensor sums = at::zeros({args.channels, args.parts, 2}, x.options().dtype(sum_type));
  args.sums = sums.data_ptr();
  launch(x.numel(), args);
  const at::Tensor totals = sums.sum(1).to(compute_type(x));
  const at::Tensor g = totals.select(1, 0), h = totals.select(1, 1);
  if (reverse) {
    return {grad_in, -g, -at::exp(-log_scale_dense) * h};
  }
  const at::Tensor scale = at::exp(log_scale_dense);
  return {grad_in, scale * g, scale * (h + bias_dense * g)};
}

at::Tensor actnorm_on_cpu(const at::Tensor& x, const at::Tensor& bias, const at::Tensor& log_scale, bool reverse) {
  return actnorm(x, bias, log_scale, reverse, on_cpu(forward_cpu));
}
// backward_cpu sums each channel in one float64 pair.
Grads actnorm_backward_on_cpu(const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& bias,
                              const at::Tensor& log_scale, bool reverse) {
  const auto one_part = [](int64_t, int64_t, int64_t) { return int64_t{1}; };
  return actnorm_backward(grad_out, x, bias, log_scale, reverse, at::kDouble, one_part, on_cpu(backward_cpu));
}

#if defined(GMK_WITH_CUDA)
at::Tensor actnorm_on_cuda(const at::Tensor& x, const at::Tensor& bias, const at::Tensor& log_scale, bool reverse) {
  return actnorm(x, bias, log_scale, reverse, on_cuda(kOp, x, forward_cuda));
}
Grads actnorm_backward_on_cuda(const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& bias,
                               const at::Tensor& log_scale, bool reverse) {
  return actnorm_backward(grad_out, x, bias, log_scale, reverse, at::kFloat, backward_parts_cuda,
                          on_cuda("gmkernels::actnorm_backward", x, backward_cuda));
}
#endif

}  // namespace

TORCH_LIBRARY_IMPL(gmkernels, CPU, m) {
  m.impl("actnorm", &actnorm_on_cpu);
  m.impl("actnorm_backward", &actnorm_backward_on_cpu);
}

#if defined(GMK_WITH_CUDA)
TORCH_LIBRARY_IMPL(gmkernels, CUDA, m) {
  m.impl("actnorm", &actnorm_on_cuda);
  m.impl("actnorm_backward", &actnorm_backward_on_cuda);
}
#endif

}  // namespace gmk::actnorm
