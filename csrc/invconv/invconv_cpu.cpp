// The 1x1 convolution as ATen's batched GEMM, on the CPU (and on CUDA where the kernel does not apply):
// per sample, a GEMM of the (out, in) weight with the (in, positions) view of x (oneDNN/MKL through
// at::baddbmm; cuBLAS on CUDA), in the weight's dtype; half inputs are widened to float first and the
// result rounded once.
#include <ATen/ops/baddbmm.h>
#include <ATen/ops/bmm.h>

#include "gmk/invconv.h"

namespace gmk::invconv {

at::Tensor conv1x1_gemm(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias) {
  const int64_t outer = x.size(0), inner = x.size(2);
  const at::Tensor x_wide = x.to(weight.scalar_type());
  const at::Tensor weights = weight.expand({outer, weight.size(0), weight.size(1)});
  at::Tensor y = bias.has_value()
                     ? at::baddbmm(bias->view({1, -1, 1}).expand({outer, weight.size(0), inner}), weights, x_wide)
                     : at::bmm(weights, x_wide);
  return y.to(x.scalar_type()).contiguous();
}

}  // namespace gmk::invconv
