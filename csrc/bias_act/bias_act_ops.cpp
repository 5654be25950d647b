// gmkernels::bias_act, bias_act_backward and bias_act_backward2: one body (argument checks, layouts, Args,
// output) shared by the CPU and the CUDA implementation. Schemas, autograd and fakes are declared in
// gmkernels/ops/bias_act.py.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include <cmath>
#include <optional>

#include "gmk/aten.h"
#include "gmk/bias_act.h"

namespace gmk::bias_act {
namespace {

Act parse_act(const char* op, c10::string_view act) {
  constexpr const char* kNames[] = {"linear", "relu", "lrelu", "tanh", "sigmoid", "elu", "selu", "softplus", "swish"};
  for (int i = 0; i < 9; ++i) {
    if (act == kNames[i]) return static_cast<Act>(i);
  }
  TORCH_CHECK_VALUE(false, op, ": act must be one of linear, relu, lrelu, tanh, sigmoid, elu, selu, softplus, "
                    "swish, got '", act, "'");
}

void check_like(const char* op, const char* name, const at::Tensor& t, const at::Tensor& like) {
  TORCH_CHECK_VALUE(t.sizes() == like.sizes(), op, ": ", name, " must have shape ", like.sizes(), ", got ",
                    t.sizes());
  TORCH_CHECK_TYPE(t.scalar_type() == like.scalar_type(), op, ": ", name, " must have dtype ", like.scalar_type(),
                   ", got ", t.scalar_type());
  TORCH_CHECK_VALUE(t.device() == like.device(), op, ": ", name, " must be on device ", like.device(), ", got ",
                    t.device());
}

// t with out's strides: t itself when they match, else a copy laid out as out.
at::Tensor laid_out_as(const at::Tensor& t, const at::Tensor& out) {
  if (t.strides() == out.strides()) return t;
  return at::empty_like(out).copy_(t);
}

// The call's Args without pointers: sizes from out's layout, the bias checked against ref's dim.
Args make_args(const char* op, const at::Tensor& ref, const std::optional<at::Tensor>& b, int64_t dim,
               c10::string_view act, double alpha, double gain, std::optional<double> clamp, const at::Tensor& out) {
  Args args;
  args.dtype = to_dtype(op, "x", ref);
  args.act = parse_act(op, act);
  TORCH_CHECK_VALUE(std::isfinite(alpha), op, ": alpha must be a finite number, got ", alpha);
  TORCH_CHECK_VALUE(args.act != Act::Lrelu || alpha >= 0, op, ": alpha must be >= 0 for lrelu, got ", alpha);
  TORCH_CHECK_VALUE(std::isfinite(gain), op, ": gain must be a finite number, got ", gain);
  TORCH_CHECK_VALUE(!clamp.has_value() || (std::isfinite(*clamp) && *clamp >= 0), op,
                    ": clamp must be None or a finite number >= 0, got ", clamp.value_or(0.0));
  args.alpha = alpha;
  args.gain = gain;
  args.has_clamp = clamp.has_value();
  args.clamp = clamp.value_or(0.0);
  args.outer = 1;
  args.inner = ref.numel();
  if (b.has_value()) {
    TORCH_CHECK_VALUE(dim >= 0 && dim < ref.dim(), op, ": dim must be in [0, ", ref.dim() - 1, "], got ", dim);
    TORCH_CHECK_VALUE(b->dim() == 1 && b->size(0) == ref.size(dim), op, ": b must have shape (", ref.size(dim),
                      "), got ", b->sizes());
    TORCH_CHECK_TYPE(b->scalar_type() == ref.scalar_type(), op, ": b must have x's dtype ", ref.scalar_type(),
                     ", got ", b->scalar_type());
    TORCH_CHECK_VALUE(b->device() == ref.device(), op, ": b must be on x's device ", ref.device(), ", got ",
                      b->device());
    args.channels = ref.size(dim);
    if (args.channels > 1 && ref.numel() > 0) {
      args.inner = out.stride(dim);
      args.outer = ref.numel() / (args.channels * args.inner);
    } else {
      args.channels = 1;
    }
  }
  return args;
}

template <typename Launch>
at::Tensor bias_act(const at::Tensor& x, const std::optional<at::Tensor>& b, int64_t dim, c10::string_view act,
                    double alpha, double gain, std::optional<double> clamp, Launch launch) {
  constexpr const char* kOp = "gmkernels::bias_act";
  at::Tensor out = at::empty_like(x);
  Args args = make_args(kOp, x, b, dim, act, alpha, gain, clamp, out);
  const at::Tensor x_in = laid_out_as(x, out);
  const at::Tensor b_in = b.has_value() ? b->contiguous() : at::Tensor();
  args.mode = Mode::Forward;
  args.x = x_in.data_ptr();
  args.b = b_in.defined() ? b_in.data_ptr() : nullptr;
  args.out = out.data_ptr();
  launch(x.numel(), args);
  return out;
}

template <typename Launch>
at::Tensor bias_act_backward(const at::Tensor& grad, const std::optional<at::Tensor>& x,
                             const std::optional<at::Tensor>& b, const std::optional<at::Tensor>& y, int64_t dim,
                             c10::string_view act, double alpha, double gain, std::optional<double> clamp,
                             Launch launch) {
  constexpr const char* kOp = "gmkernels::bias_act_backward";
  const Act parsed = parse_act(kOp, act);
  const bool from_x = reads_x(parsed);
  const bool from_y = !from_x && (parsed == Act::Relu || parsed == Act::Lrelu || clamp.has_value());
  TORCH_CHECK_VALUE(!from_x || x.has_value(), kOp, ": x must be given for act='", act, "'");
  TORCH_CHECK_VALUE(!from_y || y.has_value(), kOp, ": y must be given for act='", act, "' with this clamp");
  TORCH_CHECK_VALUE(!b.has_value() || x.has_value(), kOp, ": b is added to x: x must be given with b");
  if (x.has_value()) check_like(kOp, "x", *x, grad);
  if (y.has_value()) check_like(kOp, "y", *y, grad);
  const at::Tensor& ref = from_x ? *x : from_y ? *y : grad;
  at::Tensor out = at::empty_like(ref);
  Args args = make_args(kOp, ref, b, dim, act, alpha, gain, clamp, out);  // b checked even where unread
  const at::Tensor grad_in = laid_out_as(grad, out);
  const at::Tensor ref_in = laid_out_as(ref, out);
  const at::Tensor b_in = from_x && b.has_value() ? b->contiguous() : at::Tensor();
  args.mode = Mode::Backward;
  args.grad = grad_in.data_ptr();
  args.x = from_x ? ref_in.data_ptr() : nullptr;
  args.y = from_y ? ref_in.data_ptr() : nullptr;
  args.b = b_in.defined() ? b_in.data_ptr() : nullptr;
  args.out = out.data_ptr();
  launch(grad.numel(), args);
  return out;
}

template <typename Launch>
at::Tensor bias_act_backward2(const at::Tensor& grad2, const at::Tensor& grad, const at::Tensor& x,
                              const std::optional<at::Tensor>& b, int64_t dim, c10::string_view act, double alpha,
                              double gain, std::optional<double> clamp, Launch launch) {
  constexpr const char* kOp = "gmkernels::bias_act_backward2";
  TORCH_CHECK_VALUE(reads_x(parse_act(kOp, act)), kOp, ": act must be a smooth activation (tanh, sigmoid, elu, "
                    "selu, softplus, swish), got '", act, "'");
  check_like(kOp, "grad", grad, grad2);
  check_like(kOp, "x", x, grad2);
  at::Tensor out = at::empty_like(x);
  Args args = make_args(kOp, x, b, dim, act, alpha, gain, clamp, out);
  const at::Tensor grad2_in = laid_out_as(grad2, out), grad_in = laid_out_as(grad, out), x_in = laid_out_as(x, out);
  const at::Tensor b_in = b.has_value() ? b->contiguous() : at::Tensor();
  args.mode = Mode::Backward2;
  args.grad2 = grad2_in.data_ptr();
  args.grad = grad_in.data_ptr();
  args.x = x_in.data_ptr();
  args.b = b_in.defined() ? b_in.data_ptr() : nullptr;
  args.out = out.data_ptr();
  launch(x.numel(), args);
  return out;
}

at::Tensor bias_act_cpu(const at::Tensor& x, const std::optional<at::Tensor>& b, int64_t dim, c10::string_view act,
                        double alpha, double gain, std::optional<double> clamp) {
  return bias_act(x, b, dim, act, alpha, gain, clamp, on_cpu(run_cpu));
}
at::Tensor bias_act_backward_cpu(const at::Tensor& grad, const std::optional<at::Tensor>& x,
                                 const std::optional<at::Tensor>& b, const std::optional<at::Tensor>& y, int64_t dim,
                                 c10::string_view act, double alpha, double gain, std::optional<double> clamp) {
  return bias_act_backward(grad, x, b, y, dim, act, alpha, gain, clamp, on_cpu(run_cpu));
}
at::Tensor bias_act_backward2_cpu(const at::Tensor& grad2, const at::Tensor& grad, const at::Tensor& x,
                                  const std::optional<at::Tensor>& b, int64_t dim, c10::string_view act, double alpha,
                                  double gain, std::optional<double> clamp) {
  return bias_act_backward2(grad2, grad, x, b, dim, act, alpha, gain, clamp, on_cpu(run_cpu));
}

#if defined(GMK_WITH_CUDA)
at::Tensor bias_act_cuda(const at::Tensor& x, const std::optional<at::Tensor>& b, int64_t dim,
                         c10::string_view act, double alpha, double gain, std::optional<double> clamp) {
  return bias_act(x, b, dim, act, alpha, gain, clamp, on_cuda("gmkernels::bias_act", x, run_cuda));
}
at::Tensor bias_act_backward_cuda(const at::Tensor& grad, const std::optional<at::Tensor>& x,
                                  const std::optional<at::Tensor>& b, const std::optional<at::Tensor>& y,
                                  int64_t dim, c10::string_view act, double alpha, double gain,
                                  std::optional<double> clamp) {
  return bias_act_backward(grad, x, b, y, dim, act, alpha, gain, clamp,
                           on_cuda("gmkernels::bias_act_backward", grad, run_cuda));
}
at::Tensor bias_act_backward2_cuda(const at::Tensor& grad2, const at::Tensor& grad, const at::Tensor& x,
                                   const std::optional<at::Tensor>& b, int64_t dim, c10::string_view act,
                                   double alpha, double gain, std::optional<double> clamp) {
  return bias_act_backward2(grad2, grad, x, b, dim, act, alpha, gain, clamp,
                            on_cuda("gmkernels::bias_act_backward2", x, run_cuda));
}
#endif

}  // namespace

TORCH_LIBRARY_IMPL(gmkernels, CPU, m) {
  m.impl("bias_act", &bias_act_cpu);
  m.impl("bias_act_backward", &bias_act_backward_cpu);
  m.impl("bias_act_backward2", &bias_act_backward2_cpu);
}

#if defined(GMK_WITH_CUDA)
TORCH_LIBRARY_IMPL(gmkernels, CUDA, m) {
  m.impl("bias_act", &bias_act_cuda);
  m.impl("bias_act_backward", &bias_act_backward_cuda);
  m.impl("bias_act_backward2", &bias_act_backward2_cuda);
}
#endif

}  // namespace gmk::bias_act
