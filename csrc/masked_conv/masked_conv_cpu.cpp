// CPU kernels of the masked and shifted convolutions: GEMMs over the live taps only.
//
// With the T live taps in raster order and the tap-major column index k = t * Cin + c, each block of
// M output pixels (several small images, or a band of rows of one large image) is
//   y (Cout, M) = W (Cout, T * Cin) · cols (T * Cin, M) + bias,
//   cols[t * Cin + c][m] = x[c][pixel m moved by tap t], zero outside the image (im2col),
// so the padding is implied and the masked taps are neither stored nor multiplied. W holds the live
// weights; at the centre tap, the input channels that an output channel's colour group does not see
// are zero in W. Backward: grad W = grad_y · colsᵀ, and grad_x is the same kind of product over the
// reflected taps, grad_x[c][p] = Σ_t Σ_o W[o][t * Cin + c] grad_y[o][p - offset_t]. The columns are
// stored pixel-major, (M, T * C), from channels-last planes, so that im2col copies runs of C contiguous
// values. Half types are computed in float32, float64 in float64. The GEMMs and the layout changes are
// ATen's (at::mm, or oneDNN's 1x1 convolution on AMD processors; see matmul), so these kernels take the
// tensors the op layer prepares rather than raw pointers.
#include <ATen/Context.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/addmm.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/mkldnn_convolution.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/zeros.h>

#include <algorithm>
#include <vector>

#include <ATen/Dispatch.h>

#include "gmk/masked_conv.h"

namespace gmk::masked_conv {
namespace {

// A block's columns hold at most about this many elements (16 MiB in float32), at least one row.
constexpr int64_t kColumnsBudget = int64_t{1} << 22;
// A parallel task copies at least this many column elements (about 20-40 us): smaller work runs on the
// calling thread. On a busy 2-core machine every parallel region can wait a scheduler time slice for
// its second thread (tiny PixelCNN training steps measured 40x slower), so small work is never split.
constexpr int64_t kGrainElements = int64_t{1} << 16;

// Tap (r, s) reads input pixel (i + dr, j + ds) for output pixel (i, j).
struct Tap {
  int64_t r, s, dr, ds;
};

std::vector<Tap> live_taps(const Geometry& g) {
  std::vector<Tap> taps;
  for (int64_t r = 0; r < g.kernel_h; ++r) {
    for (int64_t s = 0; s < g.kernel_w; ++s) {
      if (tap_is_live(g, r, s)) taps.push_back({r, s, r - g.pad_top, s - g.pad_left});
    }
  }
  return taps;
}

// A block of output pixels multiplied by one GEMM: `samples` whole images from sample n0 (small images
// are batched, so that a GEMM is not called per image), or rows [row0, row0 + rows) of sample n0 alone
// (samples == 1) when one image's columns exceed the budget.
struct Block {
  int64_t n0, samples, row0, rows;
};

// Image rows [first, first + count): those a block's taps read.
struct Rows {
  int64_t first, count;
};

Rows rows_read(const Geometry& g, const std::vector<Tap>& taps, const Block& block) {
  int64_t low = 0, high = 0;
  for (const Tap& tap : taps) {
    low = std::min(low, tap.dr);
    high = std::max(high, tap.dr);
  }
  const int64_t first = std::clamp<int64_t>(block.row0 + low, 0, g.height);
  return {first, std::clamp<int64_t>(block.row0 + block.rows + high, first, g.height) - first};
}

// The block's (M, T * C) columns, cols[((s * rows) + i - row0) * W + j][t * C + c] =
// planes[s][i + dr - read.first][j + ds][c], zero outside the image, in buffer; planes is
// (samples, read.count, W, C) contiguous: the rows the taps read of the block's samples. Parallel over
// image rows, at least kGrainElements per task.
template <typename T>
at::Tensor im2col(const Geometry& g, const std::vector<Tap>& taps, const at::Tensor& planes, const Block& block,
                  const Rows& read, const at::Tensor& buffer) {
  const int64_t H = g.height, W = g.width, C = planes.size(3), K = static_cast<int64_t>(taps.size()) * C;
  const T* x = planes.const_data_ptr<T>();
  T* cols = buffer.data_ptr<T>();
  const int64_t grain = std::max<int64_t>(1, kGrainElements / std::max<int64_t>(1, W * K));
  at::parallel_for(0, block.samples * block.rows, grain, [&](int64_t begin, int64_t end) {
    T* out = cols + begin * W * K;
    for (int64_t row = begin; row < end; ++row) {
      const int64_t s = row / block.rows, i = block.row0 + row % block.rows;
      const T* image = x + s * read.count * W * C;
      for (int64_t j = 0; j < W; ++j) {
        for (const Tap& tap : taps) {
          const int64_t ii = i + tap.dr, jj = j + tap.ds;
          if (0 <= ii && ii < H && 0 <= jj && jj < W) {
            std::copy_n(image + ((ii - read.first) * W + jj) * C, C, out);
          } else {
            std::fill_n(out, C, T(0));
          }
          out += C;
        }
      }
    }
  });
  return buffer.narrow(0, 0, block.samples * block.rows * W * K).view({block.samples * block.rows * W, K});
}

// The taps of grad_x = the convolution of grad_y with the reflected kernel.
std::vector<Tap> reflected(std::vector<Tap> taps) {
  for (Tap& tap : taps) {
    tap.dr = -tap.dr;
    tap.ds = -tap.ds;
  }
  return taps;
}

// b (k, n) as an image of k channels, 1 x n pixels: NCHW if b is row-major, channels_last if b is
// column-major.
at::Tensor as_image(const at::Tensor& b) {
  if (b.t().is_contiguous()) return b.t().view({1, 1, b.size(1), b.size(0)}).permute({0, 3, 1, 2});
  return b.contiguous().view({1, b.size(0), 1, b.size(1)});
}

// oneDNN's GEMM or MKL's (at::mm) for float32: MKL takes its AVX2 path on AMD processors, where oneDNN
// ran 2-2.3x faster (AMD EPYC dev machine: 200-235 against 105 GFLOP/s on one thread for (m, k, n) =
// (128, 640, 1024)); on the Intel Xeon dev machine MKL ran 1.3-1.6x faster than oneDNN (2 threads,
// (32-128, 288-640, 1024-4096)).
bool prefer_onednn_gemm() {
  static const bool amd = __builtin_cpu_is("amd");
  return amd && at::hasMKLDNN() && at::globalContext().userEnabledMkldnn();
}

// a (m, k) · b (k, n) (+ bias (m), may be undefined), row- or column-major. With oneDNN (see above) it
// runs as a 1x1 convolution of b with a as the filters: ATen reaches oneDNN's GEMM only through convolution.
at::Tensor matmul(const at::Tensor& a, const at::Tensor& b, const at::Tensor& bias = {}) {
  if (a.scalar_type() != at::kFloat || a.numel() == 0 || b.numel() == 0 || !prefer_onednn_gemm()) {
    return bias.defined() ? at::addmm(bias.unsqueeze(1), a, b) : at::mm(a, b);
  }
  const at::Tensor filters = a.contiguous().view({a.size(0), a.size(1), 1, 1});
  const std::optional<at::Tensor> bias_opt = bias.defined() ? std::optional<at::Tensor>(bias) : std::nullopt;
  return at::mkldnn_convolution(as_image(b), filters, bias_opt, {0, 0}, {1, 1}, {1, 1}, 1).squeeze(2).squeeze(0);
}

// The live weights as a (Cout, T * Cin) matrix in the math type, zero where the centre tap joins
// channels the mask separates. The weights of masked taps are never read.
template <typename scalar_t, typename opmath_t>
at::Tensor pack_weight(const Geometry& g, const std::vector<Tap>& taps, const at::Tensor& weight, at::ScalarType type) {
  const int64_t cin = g.in_channels, kk = g.kernel_h * g.kernel_w;
  at::Tensor packed = at::empty({g.out_channels, static_cast<int64_t>(taps.size()) * cin}, at::TensorOptions(type));
  const scalar_t* w = weight.const_data_ptr<scalar_t>();
  auto* p = packed.data_ptr<opmath_t>();
  for (int64_t o = 0; o < g.out_channels; ++o) {
    for (const Tap& tap : taps) {
      for (int64_t c = 0; c < cin; ++c, ++p) {
        *p = weight_is_live(g, o, c, tap.r, tap.s)
                 ? static_cast<opmath_t>(w[(o * cin + c) * kk + tap.r * g.kernel_w + tap.s])
                 : opmath_t(0);
      }
    }
  }
  return packed;
}

// The inverse of pack_weight for the gradient: every masked weight's gradient is exactly zero.
template <typename scalar_t, typename opmath_t>
void unpack_weight_grad(const Geometry& g, const std::vector<Tap>& taps, const at::Tensor& packed,
                        const at::Tensor& grad_weight) {
  const int64_t cin = g.in_channels, kk = g.kernel_h * g.kernel_w;
  scalar_t* out = grad_weight.data_ptr<scalar_t>();
  std::fill(out, out + g.out_channels * cin * kk, scalar_t(0));
  const opmath_t* p = packed.data_ptr<opmath_t>();
  for (int64_t o = 0; o < g.out_channels; ++o) {
    for (const Tap& tap : taps) {
      for (int64_t c = 0; c < cin; ++c, ++p) {
        if (weight_is_live(g, o, c, tap.r, tap.s)) {
          out[(o * cin + c) * kk + tap.r * g.kernel_w + tap.s] = static_cast<scalar_t>(*p);
        }
      }
    }
  }
}

// The block's pixels of an image, as a (C, M) matrix in the math type: a view when it is one sample's
// pixels in the math type, else a copy.
at::Tensor block_pixels(const at::Tensor& image, const Block& block, const Geometry& g, at::ScalarType math) {
  const at::Tensor pixels =
      image.narrow(0, block.n0, block.samples).flatten(2).narrow(2, block.row0 * g.width, block.rows * g.width);
  return pixels.transpose(0, 1).reshape({image.size(1), -1}).to(math);
}

// Writes the (C, M) result into the block's pixels of an image.
void store_block(const at::Tensor& image, const Block& block, const Geometry& g, const at::Tensor& result) {
  image.narrow(0, block.n0, block.samples)
      .flatten(2)
      .narrow(2, block.row0 * g.width, block.rows * g.width)
      .copy_(result.view({image.size(1), block.samples, block.rows * g.width}).transpose(0, 1));
}

// Rows `read` of the block's samples of an image as contiguous (samples, read.count, W, C) planes in the
// math type (a band of rows converts only the rows its taps read: converting whole samples per band took
// time quadratic in the image's size). From NCHW, a transpose of each (C, rows * W) matrix: ATen copies
// those in cache blocks, 1.8x faster here than the equivalent permute of (C, H, W).
at::Tensor channels_last_planes(const at::Tensor& image, const Block& block, const Rows& read, at::ScalarType math) {
  return image.narrow(0, block.n0, block.samples)
      .narrow(2, read.first, read.count)
      .flatten(2)
      .transpose(1, 2)
      .to(math)
      .contiguous()
      .view({block.samples, read.count, image.size(3), image.size(1)});
}

// The block's columns for `taps` over image (N, C, H, W), dense NCHW or channels_last.
template <typename T>
at::Tensor block_columns(const Geometry& g, const std::vector<Tap>& taps, const at::Tensor& image, const Block& block,
                         const at::Tensor& buffer, at::ScalarType math) {
  const Rows read = rows_read(g, taps, block);
  return im2col<T>(g, taps, channels_last_planes(image, block, read, math), block, read, buffer);
}

// The blocks of the batch, in order: whole samples per block while a sample's columns, of up to max_k
// values per pixel, fit kColumnsBudget; else bands of rows of one sample.
template <typename Body>
void for_each_block(const Geometry& g, int64_t max_k, Body body) {
  const int64_t per_row = std::max<int64_t>(1, max_k * g.width), per_sample = per_row * std::max<int64_t>(1, g.height);
  if (per_sample <= kColumnsBudget) {
    const int64_t samples = std::min(kColumnsBudget / per_sample, g.batch);
    for (int64_t n0 = 0; n0 < g.batch; n0 += samples) body(Block{n0, std::min(samples, g.batch - n0), 0, g.height});
    return;
  }
  const int64_t rows = std::clamp<int64_t>(kColumnsBudget / per_row, 1, g.height);
  for (int64_t n = 0; n < g.batch; ++n) {
    for (int64_t row0 = 0; row0 < g.height; row0 += rows) body(Block{n, 1, row0, std::min(rows, g.height - row0)});
  }
}

// The column buffer of the largest block for_each_block makes.
at::Tensor column_buffer(const Geometry& g, int64_t max_k, at::ScalarType math) {
  int64_t largest = 0;
  for_each_block(g, max_k, [&](const Block& block) {
    largest = std::max(largest, block.samples * block.rows * g.width * max_k);
  });
  return at::empty({largest}, math);
}

template <typename scalar_t>
void forward_typed(const Geometry& g, const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias_in,
                   const at::Tensor& y) {
  using opmath_t = at::opmath_type<scalar_t>;
  const at::ScalarType math = c10::CppTypeToScalarType<opmath_t>::value;
  const std::vector<Tap> taps = live_taps(g);
  const at::Tensor w = pack_weight<scalar_t, opmath_t>(g, taps, weight, math);
  const at::Tensor bias = bias_in.defined() ? bias_in.to(math) : at::Tensor();
  const at::Tensor buffer = column_buffer(g, w.size(1), math);
  for_each_block(g, w.size(1), [&](const Block& block) {
    const at::Tensor cols = block_columns<opmath_t>(g, taps, x, block, buffer, math);
    store_block(y, block, g, matmul(w, cols.t(), bias));
  });
}

template <typename scalar_t>
void backward_typed(const Geometry& g, const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& weight,
                    const at::Tensor& grad_x, const at::Tensor& grad_weight, const at::Tensor& grad_bias) {
  using opmath_t = at::opmath_type<scalar_t>;
  const at::ScalarType math = c10::CppTypeToScalarType<opmath_t>::value;
  // Outputs without elements are skipped as undefined ones (with Cout = 0 there is no GEMM to run).
  const bool want_x = grad_x.numel() > 0, want_weight = grad_weight.numel() > 0, want_bias = grad_bias.numel() > 0;
  const std::vector<Tap> taps = live_taps(g), reflected_taps = reflected(taps);
  const int64_t t = static_cast<int64_t>(taps.size());
  const at::Tensor grad_w = want_weight ? at::zeros({g.out_channels, t * g.in_channels}, math) : at::Tensor();
  // (Cin, T * Cout): w_reflected[c][t * Cout + o] = w[o][t * Cin + c].
  const at::Tensor w_reflected =
      want_x ? pack_weight<scalar_t, opmath_t>(g, taps, weight, math)
                        .view({g.out_channels, t, g.in_channels})
                        .permute({2, 1, 0})
                        .reshape({g.in_channels, t * g.out_channels})
                  : at::Tensor();
  const int64_t max_k = t * std::max(g.in_channels, g.out_channels);
  const at::Tensor buffer = column_buffer(g, max_k, math);
  for_each_block(g, max_k, [&](const Block& block) {
    if (want_weight) {
      const at::Tensor cols = block_columns<opmath_t>(g, taps, x, block, buffer, math);
      grad_w.add_(matmul(block_pixels(grad_out, block, g, math), cols));
    }
    if (want_x) {
      const at::Tensor cols = block_columns<opmath_t>(g, reflected_taps, grad_out, block, buffer, math);
      store_block(grad_x, block, g, matmul(w_reflected, cols.t()));
    }
  });
  if (want_weight) unpack_weight_grad<scalar_t, opmath_t>(g, taps, grad_w, grad_weight);
  if (want_bias) grad_bias.copy_(grad_out.sum({0, 2, 3}, false, math));
}

}  // namespace

void forward_cpu(const Geometry& g, const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
                 const at::Tensor& y) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "masked_conv_forward_cpu",
                                  [&] { forward_typed<scalar_t>(g, x, weight, bias, y); });
}
void backward_cpu(const Geometry& g, const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& weight,
                  const at::Tensor& grad_x, const at::Tensor& grad_weight, const at::Tensor& grad_bias) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "masked_conv_backward_cpu", [&] {
    backward_typed<scalar_t>(g, grad_out, x, weight, grad_x, grad_weight, grad_bias);
  });
}

}  // namespace gmk::masked_conv
