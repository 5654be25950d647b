// Masked (PixelCNN, arXiv 1601.06759 §3.4) and shifted (PixelCNN++, arXiv 1701.05517) 2D convolutions:
// which taps and channel pairs of the kernel are live, shared by the CPU and CUDA kernels; the kernels'
// arguments and entry points.
//
// Every one of these convolutions is a stride-1 convolution with output H x W whose output (i, j)
// reads input (i + r - pad_top, j + s - pad_left) through tap (r, s), zero outside the image:
//   masked kxk:          pad_top = pad_left = k / 2, taps up to the centre in raster order;
//   shifted "down":       pad_top = kh - 1, pad_left = (kw - 1) / 2, every tap;
//   shifted "down_right": pad_top = kh - 1, pad_left = kw - 1, every tap.
#pragma once
#include <cstdint>

#include "gmk/common.h"

#if defined(GMK_WITH_CUDA)
#include <cuda_runtime_api.h>
#endif

namespace at {
class Tensor;  // only named here: the CPU entry points take tensors (end of file)
}  // namespace at

namespace gmk::masked_conv {

// Mask::None: every tap live (the shifted convolutions).
enum class Mask : int { None, A, B };

struct Geometry {
  int64_t batch = 0, in_channels = 0, out_channels = 0, height = 0, width = 0;
  int64_t kernel_h = 1, kernel_w = 1, pad_top = 0, pad_left = 0;
  Mask mask = Mask::None;
  int64_t color_groups = 1;
};

GMK_HOST_DEVICE bool is_centre(const Geometry& g, int64_t r, int64_t s) {
  return g.mask != Mask::None && r == g.kernel_h / 2 && s == g.kernel_w / 2;
}

// The centre tap joins output channel o to the input channels [0, centre_inputs(o)): output colour
// group q sees input groups < q (mask A) or <= q (mask B); the groups are contiguous equal thirds
// for RGB. One group: none (A) or all (B).
GMK_HOST_DEVICE int64_t centre_inputs(const Geometry& g, int64_t o) {
  const int64_t group = o / (g.out_channels / g.color_groups);
  return (group + (g.mask == Mask::B ? 1 : 0)) * (g.in_channels / g.color_groups);
}

// Raster order: rows above the centre, the centre row left of the centre, and the centre tap when
// some channel pair passes through it.
GMK_HOST_DEVICE bool tap_is_live(const Geometry& g, int64_t r, int64_t s) {
  if (g.mask == Mask::None) return true;
  const int64_t centre = g.kernel_h / 2;
  if (r != centre) return r < centre;
  if (s != centre) return s < centre;
  return g.mask == Mask::B || g.color_groups > 1;
}

// Whether weight[o, i, r, s] is read (and gets a gradient).
GMK_HOST_DEVICE bool weight_is_live(const Geometry& g, int64_t o, int64_t i, int64_t r, int64_t s) {
  if (!tap_is_live(g, r, s)) return false;
  return !is_centre(g, r, s) || i < centre_inputs(g, o);
}

// Entry points, called by masked_conv_ops.cpp (which checks the arguments).

// The CPU kernels (masked_conv_cpu.cpp) are GEMMs through ATen (at::mm, or oneDNN's 1x1 convolution on
// AMD processors) and layout changes of whole tensors, so they take tensors, which this header only
// names. x, y and grad_x are (N, Cin or Cout, H, W), dense in NCHW or channels_last order (y and
// grad_x in x's); grad_out (N, Cout, H, W) dense in either order; weight (Cout, Cin, kh, kw) and
// grad_weight contiguous; bias and grad_bias (Cout). Forward reads x, weight, bias (undefined: none)
// and writes y; backward reads grad_out, x, weight and writes those of grad_x, grad_weight, grad_bias
// that are defined and not empty. All of one dtype.
void forward_cpu(const Geometry& g, const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
                 const at::Tensor& y);
void backward_cpu(const Geometry& g, const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& weight,
                  const at::Tensor& grad_x, const at::Tensor& grad_weight, const at::Tensor& grad_bias);

// The CUDA kernels' problems (masked_conv_cuda.cu). Activations are dense channels_last
// (N, H, W, C); weights are packed per live tap (the first live_taps taps in raster order).

// out[p, n] = bias[n] + sum over live taps t and channels k of a[p + offset_t, k] * b[t, k, n], zero
// outside the image. Forward: a = x, b (taps, Cin, Cout), offsets those of the geometry. grad_x
// (reflect): a = grad_out, b (taps, Cout, Cin), offsets reflected, bias null. The centre tap's dead
// channel pairs are skipped whatever b holds there.
struct TapGemmArgs {
  Geometry geometry;
  DType dtype = DType::Float32;
  bool allow_tf32 = false, reflect = false, out_channels_last = false;
  int64_t live_taps = 0, reduce_channels = 0, out_channels = 0;
  const void* a = nullptr;
  const void* b = nullptr;
  const void* bias = nullptr;
  void* out = nullptr;  // (N, out_channels, H, W), NCHW or channels_last
};

// partial[split, t, i, o] = sum over the positions p of split of x[p + offset_t, i] * grad_out[p, o]
// in float32 (zero at the centre tap's dead pairs); the caller sums over splits.
struct WeightGradArgs {
  Geometry geometry;
  DType dtype = DType::Float32;
  bool allow_tf32 = false;
  int64_t live_taps = 0, splits = 1, positions_per_split = 0;
  const void* x = nullptr;
  const void* grad_out = nullptr;
  float* partial = nullptr;  // (splits, live_taps, Cin, Cout)
};

#if defined(GMK_WITH_CUDA)
cudaError_t tap_gemm_cuda(const TapGemmArgs& args, cudaStream_t stream);
cudaError_t weight_grad_cuda(const WeightGradArgs& args, cudaStream_t stream);
#endif

}  // namespace gmk::masked_conv
