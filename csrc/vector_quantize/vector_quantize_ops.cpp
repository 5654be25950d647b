// gmkernels::vector_quantize and vector_quantize_statistics: one body (argument checks, Args, outputs) shared
// by the CPU and the CUDA implementation. Schemas, autograd and fakes are declared in
// gmkernels/ops/vector_quantize.py.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <tuple>

#include "gmk/aten.h"
#include "gmk/vector_quantize.h"

namespace gmk::vector_quantize {
namespace {

at::ScalarType accumulate_type(const at::Tensor& x) {
  return x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

void check_x(const char* op, const at::Tensor& x, DType& dtype) {
  dtype = to_dtype(op, "x", x);
  TORCH_CHECK_VALUE(x.dim() == 3, op, ": x must be (outer, dim, inner), got shape ", x.sizes());
  TORCH_CHECK_VALUE(x.size(1) >= 1, op, ": x must have a code dimension of at least 1, got shape ", x.sizes());
}

template <typename Launch>
std::tuple<at::Tensor, at::Tensor, at::Tensor> vector_quantize(const at::Tensor& x, const at::Tensor& codebook,
                                                               Launch launch) {
  constexpr const char* kOp = "gmkernels::vector_quantize";
  SearchArgs args;
  check_x(kOp, x, args.dtype);
  TORCH_CHECK_TYPE(codebook.is_floating_point(), kOp, ": codebook must be a floating-point tensor, got ",
                   codebook.scalar_type());
  TORCH_CHECK_VALUE(codebook.dim() == 2 && codebook.size(0) >= 1 && codebook.size(1) == x.size(1), kOp,
                    ": codebook must be (codes >= 1, ", x.size(1), "), got shape ", codebook.sizes());
  TORCH_CHECK_TYPE(codebook.scalar_type() == x.scalar_type(), kOp, ": codebook must have x's dtype ",
                   x.scalar_type(), ", got ", codebook.scalar_type());
  TORCH_CHECK_VALUE(codebook.device() == x.device(), kOp, ": codebook must be on x's device ", x.device(), ", got ",
                    codebook.device());
  const at::Tensor x_in = x.contiguous(), codebook_in = codebook.contiguous();
  args.outer = x.size(0);
  args.dim = x.size(1);
  args.inner = x.size(2);
  args.codes = codebook.size(0);
  const auto accumulate = x.options().dtype(accumulate_type(x));
  at::Tensor quantized = at::empty(x.sizes(), x.options());
  at::Tensor indices = at::empty({args.outer, args.inner}, x.options().dtype(at::kLong));
  at::Tensor distance = at::empty({args.outer, args.inner}, accumulate);
  at::Tensor norms = at::empty({args.codes}, accumulate);
  args.x = x_in.data_ptr();
  args.codebook = codebook_in.data_ptr();
  args.code_norms = norms.data_ptr();
  args.quantized = quantized.data_ptr();
  args.indices = indices.data_ptr<int64_t>();
  args.distance = distance.data_ptr();
  launch(args.outer * args.inner, args);
  return {quantized, indices, distance};
}

// workspace: the CUDA kernels' float64 accumulators (StatisticsArgs::accumulators).
template <typename Launch>
std::tuple<at::Tensor, at::Tensor> statistics(const at::Tensor& x, const at::Tensor& indices, int64_t num_codes,
                                              Launch launch, bool workspace) {
  constexpr const char* kOp = "gmkernels::vector_quantize_statistics";
  StatisticsArgs args;
  check_x(kOp, x, args.dtype);
  TORCH_CHECK_TYPE(indices.scalar_type() == at::kLong, kOp, ": indices must be int64, got ", indices.scalar_type());
  TORCH_CHECK_VALUE(indices.dim() == 2 && indices.size(0) == x.size(0) && indices.size(1) == x.size(2), kOp,
                    ": indices must have shape (", x.size(0), ", ", x.size(2), "), got ", indices.sizes());
  TORCH_CHECK_VALUE(indices.device() == x.device(), kOp, ": indices must be on x's device ", x.device(), ", got ",
                    indices.device());
  TORCH_CHECK_VALUE(num_codes >= 1, kOp, ": num_codes must be >= 1, got ", num_codes);
  const at::Tensor x_in = x.contiguous(), indices_in = indices.contiguous();
  args.outer = x.size(0);
  args.dim = x.size(1);
  args.inner = x.size(2);
  args.codes = num_codes;
  const auto accumulate = x.options().dtype(accumulate_type(x));
  at::Tensor counts = at::empty({num_codes}, accumulate);
  at::Tensor sums = at::empty({num_codes, args.dim}, accumulate);
  args.x = x_in.data_ptr();
  args.indices = indices_in.data_ptr<int64_t>();
  args.counts = counts.data_ptr();
  args.sums = sums.data_ptr();
  at::Tensor accumulators;
  if (workspace) {
    accumulators = at::empty({num_codes * (args.dim + 1)}, x.options().dtype(at::kDouble));
    args.accumulators = accumulators.data_ptr<double>();
  }
  // every call writes counts and sums (zeros for an empty batch)
  launch(num_codes * args.dim, args);
  return {counts, sums};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> vector_quantize_cpu(const at::Tensor& x, const at::Tensor& codebook) {
  return vector_quantize(x, codebook, on_cpu(search_cpu));
}
std::tuple<at::Tensor, at::Tensor> statistics_on_cpu(const at::Tensor& x, const at::Tensor& indices,
                                                     int64_t num_codes) {
  return statistics(x, indices, num_codes, on_cpu(statistics_cpu), false);
}

#if defined(GMK_WITH_CUDA)
std::tuple<at::Tensor, at::Tensor, at::Tensor> vector_quantize_cuda(const at::Tensor& x, const at::Tensor& codebook) {
  return vector_quantize(x, codebook, on_cuda("gmkernels::vector_quantize", x, search_cuda));
}
std::tuple<at::Tensor, at::Tensor> statistics_on_cuda(const at::Tensor& x, const at::Tensor& indices,
                                                      int64_t num_codes) {
  return statistics(x, indices, num_codes, on_cuda("gmkernels::vector_quantize_statistics", x, statistics_cuda),
                    true);
}
#endif

}  // namespace

TORCH_LIBRARY_IMPL(gmkernels, CPU, m) {
  m.impl("vector_quantize", &vector_quantize_cpu);
  m.impl("vector_quantize_statistics", &statistics_on_cpu);
}

#if defined(GMK_WITH_CUDA)
TORCH_LIBRARY_IMPL(gmkernels, CUDA, m) {
  m.impl("vector_quantize", &vector_quantize_cuda);
  m.impl("vector_quantize_statistics", &statistics_on_cuda);
}
#endif

}  // namespace gmk::vector_quantize
