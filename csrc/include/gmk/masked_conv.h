// Masked (PixelCNN, arXiv 1601.06759 §3.4) and shifted (PixelCNN++, arXiv 1701.05517) 2D convolutions:
// which taps and channel pairs of the kernel are live. Shared by the CPU and CUDA kernels.
//
// Every one of these convolutions is a stride-1 convolution with output H x W whose output (i, j)
// reads input (i + r - pad_top, j + s - pad_left) through tap (r, s), zero outside the image:
//   masked kxk:          pad_top = pad_left = k / 2, taps up to the centre in raster order;
//   shifted "down":       pad_top = kh - 1, pad_left = (kw - 1) / 2, every tap;
//   shifted "down_right": pad_top = kh - 1, pad_left = kw - 1, every tap.
#pragma once
#include <cstdint>

#include "gmk/common.h"

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

}  // namespace gmk::masked_conv
