// gmkernels::logistic_mixture_nll, logistic_mixture_nll_backward and logistic_mixture_sample:
// one body per op (argument checks, Args, outputs) shared by the CPU and the CUDA implementation,
// which differ only in the kernel they launch. Autograd and fake tensors are registered in
// gmkernels/ops/logistic_mixture.py.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <cmath>
#include <limits>

#include "gmk/aten.h"
#include "gmk/logistic_mixture.h"

namespace gmk::logistic_mixture {
namespace {

constexpr const char* kNll = "gmkernels::logistic_mixture_nll";
constexpr const char* kNllBackward = "gmkernels::logistic_mixture_nll_backward";
constexpr const char* kSample = "gmkernels::logistic_mixture_sample";

// The dtype of x, the noise, nll and samples: float64 for float64 params, float32 otherwise.
at::ScalarType data_dtype(const at::Tensor& params) {
  return params.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

Strides3 strides_of(const at::Tensor& t) { return {t.stride(0), t.stride(1), t.stride(2)}; }

// A tensor given with params: its shape, dtype and device.
void check_like_params(const char* op, const char* name, const at::Tensor& t, const at::Tensor& params,
                       at::IntArrayRef sizes, at::ScalarType dtype) {
  TORCH_CHECK_VALUE(t.sizes() == sizes, op, ": ", name, " must have shape ", sizes, ", got ", t.sizes());
  TORCH_CHECK_TYPE(t.scalar_type() == dtype, op, ": ", name, " must be ", dtype, " for ", params.scalar_type(),
                   " params, got ", t.scalar_type());
  TORCH_CHECK_VALUE(t.device() == params.device(), op, ": ", name, " must be on params' device ", params.device(),
                    ", got ", t.device());
}

// params (N, P, S) and `data` (N, C, S), the tensor that gives C (x or logistic_u).
Args make_args(const char* op, const at::Tensor& params, const at::Tensor& data, const char* data_name,
               int64_t num_bins, double log_scale_min) {
  TORCH_CHECK_VALUE(params.dim() == 3, op, ": params must be (N, P, S), got shape ", params.sizes());
  TORCH_CHECK_VALUE(data.dim() == 3, op, ": ", data_name, " must be (N, C, S), got shape ", data.sizes());
  const int64_t channels = data.size(1), num_params = params.size(1);
  TORCH_CHECK_VALUE(channels == 1 || channels == 3, op, ": ", data_name,
                    ".size(1) (the channels C) must be 1 or 3, got ", channels);
  const int64_t per_mixture = params_per_position(channels, 1);
  TORCH_CHECK_VALUE(num_params > 0 && num_params % per_mixture == 0, op, ": params.size(1) must be ", per_mixture,
                    "K for C = ", channels, " channels (K logits, then per channel K means, K log-scales",
                    channels == 3 ? ", K coefficients" : "", "; K >= 1), got ", num_params);
  TORCH_CHECK_VALUE(num_bins >= 2, op, ": num_bins must be >= 2, got ", num_bins);
  // a bin must be wider than the spacing of the compute dtype's floats near 1 (ops/logistic_mixture.py)
  const int64_t most_bins = params.scalar_type() == at::kDouble ? (int64_t{1} << 52) + 1 : (int64_t{1} << 23) + 1;
  TORCH_CHECK_VALUE(num_bins <= most_bins, op, ": num_bins must be <= ", most_bins, " for ", params.scalar_type(),
                    " params (a bin must be wider than the spacing of the compute dtype's floats near 1), got ",
                    num_bins);
  TORCH_CHECK_VALUE(std::isfinite(log_scale_min), op, ": log_scale_min must be finite, got ", log_scale_min);
  // e^log_scale_min, the smallest scale, must be a finite float32 (gmkernels/ops/logistic_mixture.py).
  const double largest = std::log(static_cast<double>(std::numeric_limits<float>::max()));
  TORCH_CHECK_VALUE(log_scale_min <= largest, op, ": log_scale_min must be <= ", largest,
                    " (e^log_scale_min, the smallest scale, must be a finite float32), got ", log_scale_min);
  Args args;
  args.dtype = to_dtype(op, "params", params);
  args.batch = params.size(0);
  args.channels = channels;
  args.mixtures = num_params / per_mixture;
  args.positions = params.size(2);
  args.num_bins = num_bins;
  args.log_scale_min = log_scale_min;
  check_like_params(op, data_name, data, params, {args.batch, channels, args.positions}, data_dtype(params));
  args.params = params.data_ptr();
  args.params_strides = strides_of(params);
  return args;
}

template <typename Launch>
at::Tensor logistic_mixture_nll(const at::Tensor& params, const at::Tensor& x, int64_t num_bins,
                                double log_scale_min, Launch launch) {
  Args args = make_args(kNll, params, x, "x", num_bins, log_scale_min);
  at::Tensor nll = at::empty({args.batch, args.positions}, params.options().dtype(data_dtype(params)));
  args.x = x.data_ptr();
  args.x_strides = strides_of(x);
  args.out = nll.data_ptr();
  launch(args.batch * args.positions, args);
  return nll;
}

template <typename Launch>
at::Tensor logistic_mixture_nll_backward(const at::Tensor& grad_nll, const at::Tensor& params, const at::Tensor& x,
                                         int64_t num_bins, double log_scale_min, Launch launch) {
  Args args = make_args(kNllBackward, params, x, "x", num_bins, log_scale_min);
  check_like_params(kNllBackward, "grad_nll", grad_nll, params, {args.batch, args.positions}, data_dtype(params));
  at::Tensor grad_params = at::empty(params.sizes(), params.options());
  args.x = x.data_ptr();
  args.x_strides = strides_of(x);
  args.grad_nll = grad_nll.data_ptr();
  args.grad_nll_strides = {grad_nll.stride(0), 0, grad_nll.stride(1)};
  args.out = grad_params.data_ptr();
  launch(args.batch * args.positions, args);
  return grad_params;
}

template <typename Launch>
at::Tensor logistic_mixture_sample(const at::Tensor& params, const at::Tensor& gumbel_u, const at::Tensor& logistic_u,
                                   int64_t num_bins, double log_scale_min, Launch launch) {
  Args args = make_args(kSample, params, logistic_u, "logistic_u", num_bins, log_scale_min);
  check_like_params(kSample, "gumbel_u", gumbel_u, params, {args.batch, args.mixtures, args.positions},
                    data_dtype(params));
  at::Tensor samples =
      at::empty({args.batch, args.channels, args.positions}, params.options().dtype(data_dtype(params)));
  args.gumbel_u = gumbel_u.data_ptr();
  args.gumbel_u_strides = strides_of(gumbel_u);
  args.logistic_u = logistic_u.data_ptr();
  args.logistic_u_strides = strides_of(logistic_u);
  args.out = samples.data_ptr();
  launch(args.batch * args.positions, args);
  return samples;
}

at::Tensor logistic_mixture_nll_on_cpu(const at::Tensor& params, const at::Tensor& x, int64_t num_bins, double log_scale_min) {
  return logistic_mixture_nll(params, x, num_bins, log_scale_min, on_cpu(nll_cpu));
}
at::Tensor logistic_mixture_nll_backward_on_cpu(const at::Tensor& grad_nll, const at::Tensor& params, const at::Tensor& x,
                               int64_t num_bins, double log_scale_min) {
  return logistic_mixture_nll_backward(grad_nll, params, x, num_bins, log_scale_min, on_cpu(nll_backward_cpu));
}
at::Tensor logistic_mixture_sample_on_cpu(const at::Tensor& params, const at::Tensor& gumbel_u, const at::Tensor& logistic_u,
                         int64_t num_bins, double log_scale_min) {
  return logistic_mixture_sample(params, gumbel_u, logistic_u, num_bins, log_scale_min, on_cpu(sample_cpu));
}

#if defined(GMK_WITH_CUDA)
at::Tensor logistic_mixture_nll_on_cuda(const at::Tensor& params, const at::Tensor& x, int64_t num_bins, double log_scale_min) {
  return logistic_mixture_nll(params, x, num_bins, log_scale_min, on_cuda(kNll, params, nll_cuda));
}
at::Tensor logistic_mixture_nll_backward_on_cuda(const at::Tensor& grad_nll, const at::Tensor& params, const at::Tensor& x,
                                int64_t num_bins, double log_scale_min) {
  return logistic_mixture_nll_backward(grad_nll, params, x, num_bins, log_scale_min,
                                       on_cuda(kNllBackward, params, nll_backward_cuda));
}
at::Tensor logistic_mixture_sample_on_cuda(const at::Tensor& params, const at::Tensor& gumbel_u, const at::Tensor& logistic_u,
                          int64_t num_bins, double log_scale_min) {
  return logistic_mixture_sample(params, gumbel_u, logistic_u, num_bins, log_scale_min,
                                 on_cuda(kSample, params, sample_cuda));
}
#endif

}  // namespace

TORCH_LIBRARY_IMPL(gmkernels, CPU, m) {
  m.impl("logistic_mixture_nll", &logistic_mixture_nll_on_cpu);
  m.impl("logistic_mixture_nll_backward", &logistic_mixture_nll_backward_on_cpu);
  m.impl("logistic_mixture_sample", &logistic_mixture_sample_on_cpu);
}

#if defined(GMK_WITH_CUDA)
TORCH_LIBRARY_IMPL(gmkernels, CUDA, m) {
  m.impl("logistic_mixture_nll", &logistic_mixture_nll_on_cuda);
  m.impl("logistic_mixture_nll_backward", &logistic_mixture_nll_backward_on_cuda);
  m.impl("logistic_mixture_sample", &logistic_mixture_sample_on_cuda);
}
#endif

}  // namespace gmk::logistic_mixture
