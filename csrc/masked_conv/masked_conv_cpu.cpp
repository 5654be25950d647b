// CPU kernels of the masked and shifted convolutions: GEMMs over the live taps only.
//
// With the T live taps in raster order and the tap-major column index k = t * Cin + c, each band of
// output rows (M pixels) of one sample is
//   y (Cout, M) = W (Cout, T * Cin) · cols (T * Cin, M) + bias,
//   cols[t * Cin + c][m] = x[c][pixel m moved by tap t], zero outside the image (im2col),
// so the padding is implied and the masked taps are neither stored nor multiplied. W holds the live
// weights; at the centre tap, the input channels that an output channel's colour group does not see
// are zero in W. Backward: grad W = grad_y · colsᵀ, and grad_x is the same kind of product over the
// reflected taps, grad_x[c][p] = Σ_t Σ_o W[o][t * Cin + c] grad_y[o][p - offset_t]. The columns are
// stored pixel-major, (M, T * C), from channels-last planes, so that im2col copies runs of C contiguous
// values. Half types are computed in float32, float64 in float64.
#include <ATen/Context.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/addmm.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/from_blob.h>
#include <ATen/ops/mkldnn_convolution.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/zeros.h>

#include <algorithm>
#include <vector>

#include "masked_conv/masked_conv.h"
#include "gmk/aten.h"

namespace gmk::masked_conv {
namespace {

// A band's columns hold at most about this many elements (16 MiB in float32), at least one row.
constexpr int64_t kColumnsBudget = int64_t{1} << 22;

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

// Output rows [row0, row0 + rows).
struct Band {
  int64_t row0, rows;
};

// The band's (M, T * C) columns, cols[(i - row0) * W + j][t * C + c] = planes[i + dr][j + ds][c], zero
// outside the image, in buffer; planes is (H, W, C) contiguous.
template <typename T>
at::Tensor im2col(const Geometry& g, const std::vector<Tap>& taps, const at::Tensor& planes, const Band& band,
                  const at::Tensor& buffer) {
  const int64_t H = g.height, W = g.width, C = planes.size(2), K = static_cast<int64_t>(taps.size()) * C;
  const T* x = planes.const_data_ptr<T>();
  T* cols = buffer.data_ptr<T>();
  at::parallel_for(band.row0, band.row0 + band.rows, 1, [&](int64_t begin, int64_t end) {
    T* out = cols + (begin - band.row0) * W * K;
    for (int64_t i = begin; i < end; ++i) {
      for (int64_t j = 0; j < W; ++j) {
        for (const Tap& tap : taps) {
          const int64_t ii = i + tap.dr, jj = j + tap.ds;
          if (0 <= ii && ii < H && 0 <= jj && jj < W) {
            std::copy_n(x + (ii * W + jj) * C, C, out);
          } else {
            std::fill_n(out, C, T(0));
          }
          out += C;
        }
      }
    }
  });
  return buffer.narrow(0, 0, band.rows * W * K).view({band.rows * W, K});
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

// a (m, k) · b (k, n) (+ bias (m), may be undefined), row- or column-major. In float32 it runs as a 1x1
// convolution of b with a as the filters: ATen reaches oneDNN's GEMM kernels only through convolution,
// and on the AMD EPYC dev machine they ran 2-2.3x faster than at::mm (MKL, which takes its AVX2 path
// on AMD): 200-235 against 105 GFLOP/s on one thread for (m, k, n) = (128, 640, 1024).
at::Tensor matmul(const at::Tensor& a, const at::Tensor& b, const at::Tensor& bias = {}) {
  if (a.scalar_type() != at::kFloat || a.numel() == 0 || b.numel() == 0 || !at::hasMKLDNN() ||
      !at::globalContext().userEnabledMkldnn()) {
    return bias.defined() ? at::addmm(bias.unsqueeze(1), a, b) : at::mm(a, b);
  }
  const at::Tensor filters = a.contiguous().view({a.size(0), a.size(1), 1, 1});
  const std::optional<at::Tensor> bias_opt = bias.defined() ? std::optional<at::Tensor>(bias) : std::nullopt;
  return at::mkldnn_convolution(as_image(b), filters, bias_opt, {0, 0}, {1, 1}, {1, 1}, 1).squeeze(2).squeeze(0);
}

// The live weights as a (Cout, T * Cin) matrix in the math type, zero where the centre tap joins
// channels the mask separates. The weights of masked taps are never read.
template <typename scalar_t, typename opmath_t>
at::Tensor pack_weight(const Geometry& g, const std::vector<Tap>& taps, const void* weight, at::ScalarType type) {
  const int64_t cin = g.in_channels, kk = g.kernel_h * g.kernel_w;
  at::Tensor packed = at::empty({g.out_channels, static_cast<int64_t>(taps.size()) * cin}, at::TensorOptions(type));
  const auto* w = static_cast<const scalar_t*>(weight);
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
void unpack_weight_grad(const Geometry& g, const std::vector<Tap>& taps, const at::Tensor& packed, void* grad_weight) {
  const int64_t cin = g.in_channels, kk = g.kernel_h * g.kernel_w;
  auto* out = static_cast<scalar_t*>(grad_weight);
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

at::ScalarType scalar_type_of(DType dtype) {
  switch (dtype) {
    case DType::Float32: return at::kFloat;
    case DType::Float64: return at::kDouble;
    case DType::Float16: return at::kHalf;
    case DType::BFloat16: return at::kBFloat16;
  }
  return at::kFloat;
}

// An (N, C, H, W) tensor over data, dense in NCHW or channels_last order.
at::Tensor image(const void* data, int64_t channels, const Geometry& g, bool channels_last, at::ScalarType type) {
  void* pointer = const_cast<void*>(data);
  if (!channels_last) return at::from_blob(pointer, {g.batch, channels, g.height, g.width}, at::TensorOptions(type));
  return at::from_blob(pointer, {g.batch, g.height, g.width, channels}, at::TensorOptions(type)).permute({0, 3, 1, 2});
}

// Sample n of an image as a (C, H * W) matrix (a view).
at::Tensor pixels(const at::Tensor& image, int64_t n) { return image[n].flatten(1); }

// The band's pixels of a (C, H * W) matrix.
at::Tensor band_of(const at::Tensor& matrix, const Geometry& g, const Band& band) {
  return matrix.narrow(1, band.row0 * g.width, band.rows * g.width);
}

// Sample n of an image as contiguous (H, W, C) planes in the math type (a view when it already is). From
// NCHW, a transpose of the (C, H * W) matrix: ATen copies those in cache blocks, 1.8x faster here than
// the equivalent permute of (C, H, W).
at::Tensor channels_last_planes(const at::Tensor& image, int64_t n, at::ScalarType math) {
  return pixels(image, n).t().to(math).contiguous().view({image.size(2), image.size(3), image.size(1)});
}

// A sample's output rows go in bands of this many rows: a band's columns, of up to max_k values per
// pixel, stay within kColumnsBudget.
int64_t band_rows(const Geometry& g, int64_t max_k) {
  return std::clamp<int64_t>(kColumnsBudget / std::max<int64_t>(1, max_k * g.width), 1, std::max<int64_t>(1, g.height));
}

template <typename Body>
void for_each_band(const Geometry& g, int64_t rows, Body body) {
  for (int64_t row0 = 0; row0 < g.height; row0 += rows) body(Band{row0, std::min(rows, g.height - row0)});
}

template <typename scalar_t>
void forward_typed(const Args& args) {
  using opmath_t = at::opmath_type<scalar_t>;
  const Geometry& g = args.geometry;
  const at::ScalarType type = scalar_type_of(args.dtype), math = c10::CppTypeToScalarType<opmath_t>::value;
  const std::vector<Tap> taps = live_taps(g);
  const at::Tensor w = pack_weight<scalar_t, opmath_t>(g, taps, args.weight, math);
  const at::Tensor bias =
      args.bias ? at::from_blob(const_cast<void*>(args.bias), {g.out_channels}, at::TensorOptions(type)).to(math)
                : at::Tensor();
  const at::Tensor x = image(args.x, g.in_channels, g, args.x_channels_last, type);
  const at::Tensor y = image(args.y, g.out_channels, g, args.x_channels_last, type);
  const int64_t rows = band_rows(g, w.size(1));
  const at::Tensor buffer = at::empty({rows * g.width * w.size(1)}, math);
  for (int64_t n = 0; n < g.batch; ++n) {
    const at::Tensor x_n = channels_last_planes(x, n, math);
    for_each_band(g, rows, [&](const Band& band) {
      const at::Tensor cols = im2col<opmath_t>(g, taps, x_n, band, buffer);
      band_of(pixels(y, n), g, band).copy_(matmul(w, cols.t(), bias));
    });
  }
}

template <typename scalar_t>
void backward_typed(const Args& args) {
  using opmath_t = at::opmath_type<scalar_t>;
  const Geometry& g = args.geometry;
  const at::ScalarType type = scalar_type_of(args.dtype), math = c10::CppTypeToScalarType<opmath_t>::value;
  const std::vector<Tap> taps = live_taps(g), reflected_taps = reflected(taps);
  const int64_t t = static_cast<int64_t>(taps.size());
  const at::Tensor x = image(args.x, g.in_channels, g, args.x_channels_last, type);
  const at::Tensor grad_out = image(args.grad_out, g.out_channels, g, args.grad_out_channels_last, type);
  const at::Tensor grad_x =
      args.grad_x ? image(args.grad_x, g.in_channels, g, args.x_channels_last, type) : at::Tensor();
  const at::Tensor grad_w = args.grad_weight ? at::zeros({g.out_channels, t * g.in_channels}, math) : at::Tensor();
  // (Cin, T * Cout): w_reflected[c][t * Cout + o] = w[o][t * Cin + c].
  const at::Tensor w_reflected =
      args.grad_x ? pack_weight<scalar_t, opmath_t>(g, taps, args.weight, math)
                        .view({g.out_channels, t, g.in_channels})
                        .permute({2, 1, 0})
                        .reshape({g.in_channels, t * g.out_channels})
                  : at::Tensor();
  const int64_t max_k = t * std::max(g.in_channels, g.out_channels), rows = band_rows(g, max_k);
  const at::Tensor buffer = at::empty({rows * g.width * max_k}, math);
  for (int64_t n = 0; n < g.batch; ++n) {
    const at::Tensor x_n = args.grad_weight ? channels_last_planes(x, n, math) : at::Tensor();
    const at::Tensor grad_y = args.grad_weight ? pixels(grad_out, n).to(math) : at::Tensor();
    const at::Tensor grad_y_n = args.grad_x ? channels_last_planes(grad_out, n, math) : at::Tensor();
    for_each_band(g, rows, [&](const Band& band) {
      if (args.grad_weight) {
        const at::Tensor cols = im2col<opmath_t>(g, taps, x_n, band, buffer);
        grad_w.add_(matmul(band_of(grad_y, g, band), cols));
      }
      if (args.grad_x) {
        const at::Tensor cols = im2col<opmath_t>(g, reflected_taps, grad_y_n, band, buffer);
        band_of(pixels(grad_x, n), g, band).copy_(matmul(w_reflected, cols.t()));
      }
    });
  }
  if (args.grad_weight) unpack_weight_grad<scalar_t, opmath_t>(g, taps, grad_w, args.grad_weight);
  if (args.grad_bias) {
    at::from_blob(args.grad_bias, {g.out_channels}, at::TensorOptions(type))
        .copy_(grad_out.sum({0, 2, 3}, false, math));
  }
}

}  // namespace

void forward_cpu(const Args& args) {
  with_scalar_type(args.dtype, [&](auto tag) { forward_typed<decltype(tag)>(args); });
}
void backward_cpu(const Args& args) {
  with_scalar_type(args.dtype, [&](auto tag) { backward_typed<decltype(tag)>(args); });
}

}  // namespace gmk::masked_conv
