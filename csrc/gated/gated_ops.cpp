// gmkernels::gated and gmkernels::gated_backward: one body per op (argument checks, Args, outputs)
// shared by the CPU and the CUDA implementation, which differ only in the kernel they launch.
// Autograd and fake tensors are registered in gmkernels/ops/gated.py.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include "gmk/aten.h"
#include "gmk/gated.h"

namespace gmk::gated {
namespace {

bool parse_activation(c10::string_view activation) {
  TORCH_CHECK_VALUE(activation == "tanh" || activation == "identity",
                    "gmkernels::gated: activation must be 'tanh' or 'identity', got '", activation, "'");
  return activation == "tanh";
}

// Strides of size-1 dimensions are arbitrary; normalised so the kernels' layout tests see through them.
Strides3 strides_of(const at::Tensor& t) {
  return {t.size(0) == 1 ? 0 : t.stride(0), t.stride(1), t.size(2) == 1 ? 1 : t.stride(2)};
}

void check_like_x(const at::Tensor& x, const at::Tensor& other, const char* name, at::IntArrayRef sizes) {
  TORCH_CHECK_VALUE(other.sizes() == sizes, "gmkernels::gated: ", name, " must have shape ", sizes, ", got ",
                    other.sizes());
  TORCH_CHECK_TYPE(other.scalar_type() == x.scalar_type(), "gmkernels::gated: ", name, " must have x's dtype ",
                   x.scalar_type(), ", got ", other.scalar_type());
  TORCH_CHECK_VALUE(other.device() == x.device(), "gmkernels::gated: ", name, " must be on x's device ", x.device(),
                    ", got ", other.device());
}

Args make_args(const at::Tensor& x, const std::optional<at::Tensor>& cond, c10::string_view activation) {
  TORCH_CHECK_VALUE(x.dim() == 3, "gmkernels::gated: x must be (outer, 2C, inner), got shape ", x.sizes());
  TORCH_CHECK_VALUE(x.size(1) % 2 == 0, "gmkernels::gated: x.size(1) must be even, got ", x.size(1));
  Args args;
  args.dtype = to_dtype("gmkernels::gated", "x", x);
  args.tanh = parse_activation(activation);
  args.outer = x.size(0);
  args.half = x.size(1) / 2;
  args.inner = x.size(2);
  args.x = x.data_ptr();
  args.x_strides = strides_of(x);
  if (cond.has_value()) {
    check_like_x(x, *cond, "cond", x.sizes());
    args.cond = cond->data_ptr();
    args.cond_strides = strides_of(*cond);
  }
  return args;
}

template <typename Launch>
at::Tensor gated(const at::Tensor& x, const std::optional<at::Tensor>& cond, c10::string_view activation,
                 Launch launch) {
  Args args = make_args(x, cond, activation);
  at::Tensor y = at::empty({args.outer, args.half, args.inner}, x.options());
  args.out = y.data_ptr();
  launch(x.numel(), args);
  return y;
}

template <typename Launch>
at::Tensor gated_backward(const at::Tensor& grad_y, const at::Tensor& x, const std::optional<at::Tensor>& cond,
                          c10::string_view activation, Launch launch) {
  Args args = make_args(x, cond, activation);
  check_like_x(x, grad_y, "grad_y", {args.outer, args.half, args.inner});
  const at::Tensor grad_y_dense = grad_y.contiguous();
  at::Tensor grad_h = at::empty({args.outer, 2 * args.half, args.inner}, x.options());
  args.grad_y = grad_y_dense.data_ptr();
  args.out = grad_h.data_ptr();
  launch(x.numel(), args);
  return grad_h;
}

at::Tensor gated_on_cpu(const at::Tensor& x, const std::optional<at::Tensor>& cond, c10::string_view activation) {
  return gated(x, cond, activation, on_cpu(forward_cpu));
}
at::Tensor gated_backward_on_cpu(const at::Tensor& grad_y, const at::Tensor& x, const std::optional<at::Tensor>& cond,
                              c10::string_view activation) {
  return gated_backward(grad_y, x, cond, activation, on_cpu(backward_cpu));
}

#if defined(GMK_WITH_CUDA)
at::Tensor gated_on_cuda(const at::Tensor& x, const std::optional<at::Tensor>& cond, c10::string_view activation) {
  return gated(x, cond, activation, on_cuda("gmkernels::gated", x, forward_cuda));
}
at::Tensor gated_backward_on_cuda(const at::Tensor& grad_y, const at::Tensor& x, const std::optional<at::Tensor>& cond,
                               c10::string_view activation) {
  return gated_backward(grad_y, x, cond, activation, on_cuda("gmkernels::gated_backward", x, backward_cuda));
}
#endif

}  // namespace

TORCH_LIBRARY_IMPL(gmkernels, CPU, m) {
  m.impl("gated", &gated_on_cpu);
  m.impl("gated_backward", &gated_backward_on_cpu);
}

#if defined(GMK_WITH_CUDA)
TORCH_LIBRARY_IMPL(gmkernels, CUDA, m) {
  m.impl("gated", &gated_on_cuda);
  m.impl("gated_backward", &gated_backward_on_cuda);
}
#endif

}  // namespace gmk::gated
