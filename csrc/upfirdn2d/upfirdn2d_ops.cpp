// gmkernels::upfirdn2d: one body (argument checks, output, Args) shared by the CPU and the CUDA
// implementation. Schema, autograd (the gradient is an upfirdn2d) and fake are declared in
// gmkernels/ops/upfirdn2d.py.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <cmath>

#include "gmk/aten.h"
#include "gmk/upfirdn2d.h"

namespace gmk::upfirdn2d {
namespace {

constexpr const char* kOp = "gmkernels::upfirdn2d";

int64_t output_size(int64_t size, int64_t up, int64_t pad0, int64_t pad1, int64_t taps, int64_t down) {
  return floor_div(size * up + pad0 + pad1 - taps, down) + 1;
}

template <typename Launch>
at::Tensor upfirdn2d(const at::Tensor& x, const at::Tensor& f, at::IntArrayRef up, at::IntArrayRef down,
                     at::IntArrayRef padding, bool flip_filter, double gain, Launch launch) {
  TORCH_CHECK_VALUE(x.dim() == 4, kOp, ": x must be (N, C, H, W), got shape ", x.sizes());
  Args args;
  args.dtype = to_dtype(kOp, "x", x);
  const at::ScalarType compute = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  TORCH_CHECK_VALUE(f.dim() == 2 && f.numel() > 0, kOp, ": f must be a non-empty 2-D (fh, fw) tensor, got shape ",
                    f.sizes());
  TORCH_CHECK_TYPE(f.scalar_type() == compute, kOp, ": f must be ", compute, " for x of dtype ", x.scalar_type(),
                   ", got ", f.scalar_type());
  TORCH_CHECK_VALUE(f.device() == x.device(), kOp, ": f must be on x's device ", x.device(), ", got ", f.device());
  TORCH_CHECK_VALUE(up.size() == 2 && up[0] >= 1 && up[1] >= 1, kOp, ": up must be two ints >= 1, got ", up);
  TORCH_CHECK_VALUE(down.size() == 2 && down[0] >= 1 && down[1] >= 1, kOp, ": down must be two ints >= 1, got ",
                    down);
  TORCH_CHECK_VALUE(padding.size() == 4, kOp, ": padding must be four ints, got ", padding);
  TORCH_CHECK_VALUE(std::isfinite(gain), kOp, ": gain must be a finite number, got ", gain);
  args.batch = x.size(0);
  args.channels = x.size(1);
  args.in_h = x.size(2);
  args.in_w = x.size(3);
  args.fh = f.size(0);
  args.fw = f.size(1);
  args.upx = up[0];
  args.upy = up[1];
  args.downx = down[0];
  args.downy = down[1];
  args.padx0 = padding[0];
  args.pady0 = padding[2];
  args.out_h = output_size(args.in_h, args.upy, padding[2], padding[3], args.fh, args.downy);
  args.out_w = output_size(args.in_w, args.upx, padding[0], padding[1], args.fw, args.downx);
  TORCH_CHECK_VALUE(args.out_h >= 1 && args.out_w >= 1, kOp, ": padding ", padding, " leaves no output (", args.out_h,
                    "x", args.out_w, ")");
  args.out_channels_last = x.is_contiguous(at::MemoryFormat::ChannelsLast) && !x.is_contiguous();
  at::Tensor out = at::empty({args.batch, args.channels, args.out_h, args.out_w},
                             x.options().memory_format(args.out_channels_last ? at::MemoryFormat::ChannelsLast
                                                                              : at::MemoryFormat::Contiguous));
  const at::Tensor f_dense = f.contiguous();
  args.x = x.data_ptr();
  for (int d = 0; d < 4; ++d) args.x_strides[d] = x.stride(d);
  args.f = f_dense.data_ptr();
  args.out = out.data_ptr();
  args.flip_filter = flip_filter;
  args.gain = gain;
  launch(out.numel(), args);
  return out;
}

at::Tensor upfirdn2d_cpu(const at::Tensor& x, const at::Tensor& f, at::IntArrayRef up, at::IntArrayRef down,
                         at::IntArrayRef padding, bool flip_filter, double gain) {
  return upfirdn2d(x, f, up, down, padding, flip_filter, gain, on_cpu(run_cpu));
}

#if defined(GMK_WITH_CUDA)
at::Tensor upfirdn2d_cuda(const at::Tensor& x, const at::Tensor& f, at::IntArrayRef up, at::IntArrayRef down,
                          at::IntArrayRef padding, bool flip_filter, double gain) {
  return upfirdn2d(x, f, up, down, padding, flip_filter, gain, on_cuda(kOp, x, run_cuda));
}
#endif

}  // namespace

TORCH_LIBRARY_IMPL(gmkernels, CPU, m) { m.impl("upfirdn2d", &upfirdn2d_cpu); }

#if defined(GMK_WITH_CUDA)
TORCH_LIBRARY_IMPL(gmkernels, CUDA, m) { m.impl("upfirdn2d", &upfirdn2d_cuda); }
#endif

}  // namespace gmk::upfirdn2d
