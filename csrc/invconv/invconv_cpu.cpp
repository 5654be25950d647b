// The 1x1 convolution as ATen's batched GEMM, on the CPU (and on CUDA where the kernel does not apply):
// per sample, a GEMM of the (out, in) weight with the (in, positions) view of x (oneDNN/MKL through
// at::baddbmm; cuBLAS on CUDA), in the weight's dtype; half inputs are widened to float first and the
// result rounded once, a run of positions at a time.
#include <ATen/ops/baddbmm.h>
#include <ATen/ops/bmm.h>
#include <ATen/ops/empty.h>

#include <algorithm>

#include "gmk/invconv.h"

namespace gmk::invconv {
namespace {

// Input elements widened per GEMM of a half x (16 MiB of float32): widening all of x and keeping a float
// y took 4x y's memory (21 GB for a bfloat16 x of 2^31 elements).
constexpr int64_t kWidenedElements = int64_t{1} << 22;

}  // namespace

at::Tensor conv1x1_gemm(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias) {
  const int64_t outer = x.size(0), out_channels = weight.size(0);
  const at::Tensor weights = weight.expand({outer, out_channels, weight.size(1)});
  const auto product = [&](const at::Tensor& x_wide) {  // (outer, out, positions) in the weight's dtype
    return bias.has_value()
               ? at::baddbmm(bias->view({1, -1, 1}).expand({outer, out_channels, x_wide.size(2)}), weights, x_wide)
               : at::bmm(weights, x_wide);
  };
  if (x.scalar_type() == weight.scalar_type()) return product(x).contiguous();
  at::Tensor y = at::empty({outer, out_channels, x.size(2)}, x.options());
  const int64_t run = std::max<int64_t>(1, kWidenedElements / std::max<int64_t>(1, outer * x.size(1)));
  for (int64_t start = 0; start < x.size(2); start += run) {
    const int64_t length = std::min(run, x.size(2) - start);
    y.narrow(2, start, length).copy_(product(x.narrow(2, start, length).to(weight.scalar_type())));
  }
  return y;
}

}  // namespace gmk::invconv
