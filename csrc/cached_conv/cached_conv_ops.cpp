// gmkernels::cached_conv2d: one body (argument checks, Args, output) shared by the CPU and the CUDA
// implementation. The schema and the fake are declared in gmkernels/ops/cached_conv.py.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <optional>

#include "gmk/aten.h"
#include "gmk/cached_conv.h"

namespace gmk::cached_conv {
namespace {

constexpr const char* kOp = "gmkernels::cached_conv2d";

void check_like_rows(const char* name, const at::Tensor& t, const at::Tensor& rows) {
  TORCH_CHECK_TYPE(t.scalar_type() == rows.scalar_type(), kOp, ": ", name, " must have rows' dtype ",
                   rows.scalar_type(), ", got ", t.scalar_type());
  TORCH_CHECK_VALUE(t.device() == rows.device(), kOp, ": ", name, " must be on rows' device ", rows.device(),
                    ", got ", t.device());
}

template <typename Launch>
at::Tensor cached_conv2d(const at::Tensor& rows, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                         int64_t column, int64_t count, int64_t stride, Launch launch) {
  Args args;
  args.dtype = to_dtype(kOp, "rows", rows);
  TORCH_CHECK_VALUE(rows.dim() == 4, kOp, ": rows must be (N, Cin, R, Wp), got shape ", rows.sizes());
  TORCH_CHECK_VALUE(weight.dim() == 4 && weight.size(1) == rows.size(1), kOp, ": weight must be (Cout, Cin=",
                    rows.size(1), ", kh, kw), got shape ", weight.sizes());
  check_like_rows("weight", weight, rows);
  const int64_t kh = weight.size(2), kw = weight.size(3);
  TORCH_CHECK_VALUE(kh >= 1 && kh <= rows.size(2) && kw >= 1, kOp, ": weight's kernel must have 1 <= kh <= R=",
                    rows.size(2), " and kw >= 1, got ", kh, " x ", kw);
  TORCH_CHECK_VALUE(count >= 1, kOp, ": count must be >= 1, got ", count);
  TORCH_CHECK_VALUE(stride >= 1, kOp, ": stride must be >= 1, got ", stride);
  TORCH_CHECK_VALUE(column >= 0 && column + (count - 1) * stride + kw <= rows.size(3), kOp, ": the window (column ",
                    column, ", count ", count, ", stride ", stride, ", kw ", kw, ") must lie in rows' ",
                    rows.size(3), " columns");
  if (bias.has_value()) {
    TORCH_CHECK_VALUE(bias->dim() == 1 && bias->size(0) == weight.size(0), kOp, ": bias must have shape (",
                      weight.size(0), "), got ", bias->sizes());
    check_like_rows("bias", *bias, rows);
  }
  at::Tensor out = at::empty({rows.size(0), weight.size(0), count}, rows.options());
  const at::Tensor weight_in = weight.contiguous();
  const at::Tensor bias_in = bias.has_value() ? bias->contiguous() : at::Tensor();
  args.batch = rows.size(0);
  args.in_channels = rows.size(1);
  args.out_channels = weight.size(0);
  args.kh = kh;
  args.kw = kw;
  args.count = count;
  args.stride = stride;
  args.s_batch = rows.stride(0);
  args.s_channel = rows.stride(1);
  args.s_row = rows.stride(2);
  args.s_column = rows.stride(3);
  args.weight = weight_in.data_ptr();
  args.bias = bias_in.defined() ? bias_in.data_ptr() : nullptr;
  args.out = out.data_ptr();
  const int64_t work = out.numel();
  if (work > 0) {  // the window's first element: row R - kh, column `column`
    const int64_t first = (rows.size(2) - kh) * rows.stride(2) + column * rows.stride(3);
    args.rows = static_cast<const char*>(rows.data_ptr()) + first * rows.element_size();
  }
  launch(work, args);
  return out;
}

at::Tensor cached_conv2d_cpu(const at::Tensor& rows, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                             int64_t column, int64_t count, int64_t stride) {
  return cached_conv2d(rows, weight, bias, column, count, stride, on_cpu(run_cpu));
}

#if defined(GMK_WITH_CUDA)
at::Tensor cached_conv2d_cuda(const at::Tensor& rows, const at::Tensor& weight,
                              const std::optional<at::Tensor>& bias, int64_t column, int64_t count, int64_t stride) {
  return cached_conv2d(rows, weight, bias, column, count, stride, on_cuda(kOp, rows, run_cuda));
}
#endif

}  // namespace

TORCH_LIBRARY_IMPL(gmkernels, CPU, m) { m.impl("cached_conv2d", &cached_conv2d_cpu); }

#if defined(GMK_WITH_CUDA)
TORCH_LIBRARY_IMPL(gmkernels, CUDA, m) { m.impl("cached_conv2d", &cached_conv2d_cuda); }
#endif

}  // namespace gmk::cached_conv
