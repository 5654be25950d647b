// gmkernels::coupling and gmkernels::coupling_backward: one body per op (argument checks, Args, outputs)
// shared by the CPU and the CUDA implementation, which differ in the kernel they launch (and the CUDA
// forward's workspace). Autograd and fake tensors are registered in gmkernels/ops/coupling.py.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <tuple>
#include <vector>

#include "gmk/coupling.h"
#include "gmk/aten.h"

namespace gmk::coupling {
namespace {

constexpr const char* kOp = "gmkernels::coupling";

Transform parse_transform(c10::string_view transform) {
  if (transform == "glow") return Transform::Glow;
  if (transform == "realnvp") return Transform::RealNVP;
  TORCH_CHECK_VALUE(transform == "additive", kOp, ": transform must be 'glow', 'realnvp' or 'additive', got '",
                    transform, "'");
  return Transform::Additive;
}

Layout parse_layout(c10::string_view layout) {
  if (layout == "halves") return Layout::Halves;
  if (layout == "checkerboard") return Layout::Checkerboard;
  if (layout == "checkerboard_odd") return Layout::CheckerboardOdd;
  TORCH_CHECK_VALUE(layout == "interleaved", kOp,
                    ": layout must be 'halves', 'interleaved', 'checkerboard' or 'checkerboard_odd', got '", layout,
                    "'");
  return Layout::Interleaved;
}

// Strides of size-1 dimensions are arbitrary; normalised so the kernels' layout tests see through them.
Strides3 strides_of(const at::Tensor& t) {
  return {t.size(0) == 1 ? 0 : t.stride(0), t.size(1) == 1 ? 0 : t.stride(1), t.size(2) == 1 ? 1 : t.stride(2)};
}

void check_tensor(const at::Tensor& x, const at::Tensor& t, const char* name, at::IntArrayRef sizes,
                  at::ScalarType dtype) {
  TORCH_CHECK_VALUE(t.sizes() == sizes, kOp, ": ", name, " must have shape ", sizes, ", got ", t.sizes());
  TORCH_CHECK_TYPE(t.scalar_type() == dtype, kOp, ": ", name, " must be ", dtype, ", got ", t.scalar_type());
  TORCH_CHECK_VALUE(t.device() == x.device(), kOp, ": ", name, " must be on x's device ", x.device(), ", got ",
                    t.device());
}

at::ScalarType logdet_type(const at::Tensor& x) {
  return x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

// The (outer, C, inner) views the kernels read: x and h themselves for the channel layouts; for a
// checkerboard, x and h are (outer, C, height, width), viewed (copied where no view exists) as
// (outer, C, height * width).
struct Views {
  at::Tensor x, h;
};

// Checks x and h, fills views and returns the kernels' arguments (pointers into views).
Args make_args(const at::Tensor& x, const at::Tensor& h, c10::string_view transform, c10::string_view layout,
               bool reverse, Views& views) {
  Args args;
  args.transform = parse_transform(transform);
  args.layout = parse_layout(layout);
  args.reverse = reverse;
  const bool checkerboard = is_checkerboard(args.layout);
  if (checkerboard) {
    TORCH_CHECK_VALUE(x.dim() == 4, kOp, ": x must be (outer, C, height, width) for layout '", layout,
                      "', got shape ", x.sizes());
  } else {
    TORCH_CHECK_VALUE(x.dim() == 3, kOp, ": x must be (outer, C, inner), got shape ", x.sizes());
    TORCH_CHECK_VALUE(x.size(1) % 2 == 0, kOp, ": x.size(1) must be even (C = 2 * half), got ", x.size(1));
  }
  args.dtype = to_dtype(kOp, "x", x);
  args.outer = x.size(0);
  args.half = checkerboard ? x.size(1) : x.size(1) / 2;
  const int64_t h_channels = args.transform == Transform::Additive ? args.half : 2 * args.half;
  std::vector<int64_t> h_sizes = x.sizes().vec();
  h_sizes[1] = h_channels;
  check_tensor(x, h, "h", h_sizes, x.scalar_type());
  if (checkerboard) {
    args.width = x.size(3);
    views.x = x.reshape({args.outer, args.half, x.size(2) * x.size(3)});
    views.h = h.reshape({args.outer, h_channels, x.size(2) * x.size(3)});
  } else {
    views.x = x;
    views.h = h;
  }
  args.inner = views.x.size(2);
  args.x = views.x.data_ptr();
  args.x_strides = strides_of(views.x);
  args.h = views.h.data_ptr();
  args.h_strides = strides_of(views.h);
  return args;
}

template <typename Launch>
std::tuple<at::Tensor, at::Tensor> coupling(const at::Tensor& x, const at::Tensor& h, c10::string_view transform,
                                            c10::string_view layout, bool reverse, Launch launch) {
  Views views;
  Args args = make_args(x, h, transform, layout, reverse, views);
  at::Tensor y = at::empty(x.sizes(), x.options().memory_format(at::MemoryFormat::Contiguous));
  const auto logdet_options = x.options().dtype(logdet_type(x));
  const bool sums = args.transform != Transform::Additive && x.numel() > 0;
  at::Tensor logdet = sums ? at::empty({args.outer}, logdet_options) : at::zeros({args.outer}, logdet_options);
  args.out = y.data_ptr();
  args.logdet = logdet.data_ptr();
  launch(x.numel(), args);
  return {y, logdet};
}

template <typename Launch>
std::tuple<at::Tensor, at::Tensor> coupling_backward(const at::Tensor& grad_y, const at::Tensor& grad_logdet,
                                                     const at::Tensor& x, const at::Tensor& h,
                                                     c10::string_view transform, c10::string_view layout,
                                                     bool reverse, Launch launch) {
  Views views;
  Args args = make_args(x, h, transform, layout, reverse, views);
  check_tensor(x, grad_y, "grad_y", x.sizes(), x.scalar_type());
  check_tensor(x, grad_logdet, "grad_logdet", {args.outer}, logdet_type(x));
  const at::Tensor grad_y_dense = grad_y.contiguous();
  const at::Tensor grad_logdet_dense = grad_logdet.contiguous();
  const auto dense = at::MemoryFormat::Contiguous;
  at::Tensor grad_x = at::empty(x.sizes(), x.options().memory_format(dense));
  at::Tensor grad_h = at::empty(h.sizes(), h.options().memory_format(dense));
  args.grad_y = grad_y_dense.data_ptr();
  args.grad_logdet = grad_logdet_dense.data_ptr();
  args.out = grad_x.data_ptr();
  args.grad_h = grad_h.data_ptr();
  launch(x.numel(), args);
  return {grad_x, grad_h};
}

using Outputs = std::tuple<at::Tensor, at::Tensor>;

Outputs coupling_on_cpu(const at::Tensor& x, const at::Tensor& h, c10::string_view transform,
                        c10::string_view layout, bool reverse) {
  return coupling(x, h, transform, layout, reverse, on_cpu(forward_cpu));
}
Outputs coupling_backward_on_cpu(const at::Tensor& grad_y, const at::Tensor& grad_logdet, const at::Tensor& x,
                                 const at::Tensor& h, c10::string_view transform, c10::string_view layout,
                                 bool reverse) {
  return coupling_backward(grad_y, grad_logdet, x, h, transform, layout, reverse, on_cpu(backward_cpu));
}

#if defined(GMK_WITH_CUDA)
// The CUDA forward writes per-block partial sums of log s into a workspace (cuda_workspace_floats).
Outputs coupling_on_cuda(const at::Tensor& x, const at::Tensor& h, c10::string_view transform,
                         c10::string_view layout, bool reverse) {
  const auto launch = [&x](int64_t work, Args args) {
    const at::Tensor workspace = at::empty({cuda_workspace_floats(args)}, x.options().dtype(at::kFloat));
    args.workspace = workspace.data_ptr();
    run_cuda(kOp, x, work, args, forward_cuda);
  };
  return coupling(x, h, transform, layout, reverse, launch);
}
Outputs coupling_backward_on_cuda(const at::Tensor& grad_y, const at::Tensor& grad_logdet, const at::Tensor& x,
                                  const at::Tensor& h, c10::string_view transform, c10::string_view layout,
                                  bool reverse) {
  return coupling_backward(grad_y, grad_logdet, x, h, transform, layout, reverse,
                           on_cuda("gmkernels::coupling_backward", x, backward_cuda));
}
#endif

}  // namespace

TORCH_LIBRARY_IMPL(gmkernels, CPU, m) {
  m.impl("coupling", &coupling_on_cpu);
  m.impl("coupling_backward", &coupling_backward_on_cpu);
}

#if defined(GMK_WITH_CUDA)
TORCH_LIBRARY_IMPL(gmkernels, CUDA, m) {
  m.impl("coupling", &coupling_on_cuda);
  m.impl("coupling_backward", &coupling_backward_on_cuda);
}
#endif

}  // namespace gmk::coupling
