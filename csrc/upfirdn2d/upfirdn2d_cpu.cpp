// CPU kernels of upfirdn2d, polyphase (no multiply by an inserted zero):
//
// - planar outputs (NCHW), one strip of output rows of one plane per task: the strip's input, zero-padded,
//   is split into down_y x down_x phase planes and its output into up_y x up_x phase planes, all with one
//   row stride S. Each (filter tap, output phase) then reads its input phase plane at a fixed shift, so it
//   is one unit-stride axpy over the whole output phase strip (rows x S, the columns past the output's
//   width discarded): long vectorised loops whatever the image width, on buffers sized for the cache (and
//   never a whole plane: one plane may hold more than 2^31 pixels);
// - channels_last outputs, one output row of all channels per task: each input row the vertical taps
//   reach (on the upsampling grid) is converted once, and each horizontal tap feeds the outputs
//   ox0 + up_x * t from the inputs ix0 + down_x * t, an axpy along the channels per output pixel.
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <vector>

#include "gmk/aten.h"
#include "gmk/cpu_math.h"
#include "gmk/upfirdn2d.h"

namespace gmk::upfirdn2d {
namespace {

constexpr int64_t kGrainMacs = 1 << 16;     // multiply-adds per parallel task, at least
constexpr int64_t kStripElements = 1 << 16;  // a planar strip's phase planes, in elements (256 KB of float)

// The weight gain * f of the tap that multiplies U[oy * down_y + j - pad_y0, ox * down_x + k - pad_x0].
template <typename T>
T weight(const Args& a, const T* f, int64_t j, int64_t k) {
  return static_cast<T>(a.gain) * f[tap_index(j, a.fh, a.flip_filter) * a.fw + tap_index(k, a.fw, a.flip_filter)];
}

// --- planar: phase planes -------------------------------------------------------------------------------

// One axpy of the planar plan: acc[acc_offset + i] += w * in[in_offset + i], i < the output phase plane's size.
template <typename T>
struct PlaneTap {
  int64_t acc_offset, in_offset;
  T w;
};

// Along one axis: output phase q (outputs q + up * t) and tap j read the input at base + down * t, where
// base = (q * down + j - pad0) / up, when that division is exact (the tap lands on the upsampling grid).
struct AxisTap {
  int64_t q, j, base;
};

std::vector<AxisTap> axis_taps(int64_t up, int64_t down, int64_t pad0, int64_t taps) {
  std::vector<AxisTap> result;
  for (int64_t q = 0; q < up; ++q) {
    for (int64_t j = 0; j < taps; ++j) {
      const int64_t r = q * down + j - pad0;
      if (phase_of(r, up) == 0) result.push_back({q, j, floor_div(r, up)});
    }
  }
  return result;
}

// The geometry of one axis of the phase planes.
struct Axis {
  int64_t margin;   // zero pixels before the image in the padded input (a multiple of down)
  int64_t outputs;  // per output phase plane: ceil(out / up)
  int64_t reach;    // input phase-plane index past the last one read, over all taps
};

Axis axis_of(const std::vector<AxisTap>& taps, int64_t up, int64_t down, int64_t out) {
  int64_t min_base = 0, max_base = 0;
  for (const AxisTap& t : taps) min_base = std::min(min_base, t.base), max_base = std::max(max_base, t.base);
  Axis axis;
  axis.margin = (-min_base + down - 1) / down * down;
  axis.outputs = (out + up - 1) / up;
  axis.reach = (max_base + axis.margin) / down + axis.outputs;
  return axis;
}

template <typename T>
GMK_CPU_INLINE void apply_plane_loop(T* acc, const T* in, const PlaneTap<T>* taps, int64_t n_taps, int64_t n) {
  for (int64_t i = 0; i < n_taps; ++i) {
    const PlaneTap<T> tap = taps[i];
    T* a = acc + tap.acc_offset;
    const T* x = in + tap.in_offset;
    for (int64_t t = 0; t < n; ++t) a[t] += tap.w * x[t];
  }
}
GMK_CPU_CLONES void apply_plane(float* acc, const float* in, const PlaneTap<float>* taps, int64_t n_taps, int64_t n) {
  apply_plane_loop(acc, in, taps, n_taps, n);
}
void apply_plane(double* acc, const double* in, const PlaneTap<double>* taps, int64_t n_taps, int64_t n) {
  apply_plane_loop(acc, in, taps, n_taps, n);
}

// The output phase rows per strip: the strip's phase planes near kStripElements, at least twice the
// halo (the input rows a strip reads beyond its own), at most the whole plane.
int64_t strip_rows(const Args& a, const Axis& ay, int64_t stride, int64_t halo) {
  const int64_t phases = a.upy * a.upx + a.downy * a.downx;
  const int64_t fitting = kStripElements / std::max<int64_t>(1, stride * phases);
  return std::max<int64_t>(1, std::min(ay.outputs, std::max({fitting, 2 * halo, int64_t(4)})));
}

template <typename scalar_t>
void run_planar(const Args& a) {
  using opmath_t = at::opmath_type<scalar_t>;
  const auto* f = static_cast<const opmath_t*>(a.f);
  const std::vector<AxisTap> ytaps = axis_taps(a.upy, a.downy, a.pady0, a.fh);
  const std::vector<AxisTap> xtaps = axis_taps(a.upx, a.downx, a.padx0, a.fw);
  const Axis ay = axis_of(ytaps, a.upy, a.downy, a.out_h), ax = axis_of(xtaps, a.upx, a.downx, a.out_w);
  // One row stride for every phase plane. A strip of R output phase rows reads input phase rows
  // [i0, i0 + R + halo): the taps' largest row shift, plus one row so that the flat axpys' reads past a
  // row's end (into discarded output columns) stay inside.
  const int64_t stride = ax.reach, halo = ay.reach - ay.outputs + 1;
  const int64_t rows = strip_rows(a, ay, stride, halo), strips = (ay.outputs + rows - 1) / rows;
  const int64_t in_rows = rows + halo, out_plane = rows * stride, in_plane = in_rows * stride;
  std::vector<PlaneTap<opmath_t>> taps;
  for (const AxisTap& ty : ytaps) {
    for (const AxisTap& tx : xtaps) {
      const int64_t py = (ty.base + ay.margin) % a.downy, sy = (ty.base + ay.margin) / a.downy;
      const int64_t px = (tx.base + ax.margin) % a.downx, sx = (tx.base + ax.margin) / a.downx;
      taps.push_back({(ty.q * a.upx + tx.q) * out_plane, (py * a.downx + px) * in_plane + sy * stride + sx,
                      weight(a, f, ty.j, tx.j)});
    }
  }
  const auto* x = static_cast<const scalar_t*>(a.x);
  auto* out = static_cast<scalar_t*>(a.out);
  const int64_t* xs = a.x_strides;
  const int64_t tasks = a.batch * a.channels * strips;
  const int64_t macs = std::max<int64_t>(1, static_cast<int64_t>(taps.size()) * out_plane);
  at::parallel_for(0, tasks, std::max<int64_t>(1, kGrainMacs / macs), [&](int64_t begin, int64_t end) {
    std::vector<opmath_t> in(a.downy * a.downx * in_plane), acc(a.upy * a.upx * out_plane);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t plane = task / strips, i0 = task % strips * rows, here = std::min(rows, ay.outputs - i0);
      const scalar_t* src = x + (plane / a.channels) * xs[0] + (plane % a.channels) * xs[1];
      // in[py][px][r][c] = x[(i0 + r) * down_y + py - margin_y, c * down_x + px - margin_x], 0 outside the image
      for (int64_t py = 0; py < a.downy; ++py) {
        for (int64_t px = 0; px < a.downx; ++px) {
          opmath_t* dst = in.data() + (py * a.downx + px) * in_plane;
          for (int64_t r = 0; r < in_rows; ++r) {
            const int64_t iy = (i0 + r) * a.downy + py - ay.margin;
            opmath_t* row = dst + r * stride;
            if (iy < 0 || iy >= a.in_h) {
              std::fill(row, row + stride, opmath_t(0));
              continue;
            }
            // columns c with ix = c * down_x + px - margin_x inside [0, in_w): [c0, c1)
            const int64_t c0 = std::min(stride, (ax.margin - px + a.downx - 1) / a.downx);
            const int64_t c1 = std::clamp<int64_t>(floor_div(a.in_w - 1 + ax.margin - px, a.downx) + 1, c0, stride);
            std::fill(row, row + c0, opmath_t(0));
            const scalar_t* pixels = src + iy * xs[2] + (c0 * a.downx + px - ax.margin) * xs[3];
            const int64_t step = a.downx * xs[3];
            for (int64_t c = c0; c < c1; ++c) row[c] = static_cast<opmath_t>(pixels[(c - c0) * step]);
            std::fill(row + c1, row + stride, opmath_t(0));
          }
        }
      }
      std::fill(acc.begin(), acc.end(), opmath_t(0));
      apply_plane(acc.data(), in.data(), taps.data(), static_cast<int64_t>(taps.size()), here * stride);
      scalar_t* dst = out + plane * a.out_h * a.out_w;
      for (int64_t oy = i0 * a.upy; oy < std::min(a.out_h, (i0 + here) * a.upy); ++oy) {
        const opmath_t* acc_row = acc.data() + (oy % a.upy) * a.upx * out_plane + (oy / a.upy - i0) * stride;
        for (int64_t qx = 0; qx < a.upx; ++qx) {
          const opmath_t* phase_row = acc_row + qx * out_plane;
          for (int64_t i = 0, ox = qx; ox < a.out_w; ++i, ox += a.upx) dst[oy * a.out_w + ox] = static_cast<scalar_t>(phase_row[i]);
        }
      }
    }
  });
}

// --- channels_last: rows of all channels ------------------------------------------------------------------

// One horizontal tap of one tap row on one phase: outputs ox0 + up_x * t take w times inputs ix0 + down_x * t.
template <typename T>
struct RowTap {
  int64_t ox0, ix0, count;
  T w;
};

// The phases of horizontal tap k: the outputs on the upsampling grid whose inputs lie inside the image.
template <typename T>
void add_row_taps(const Args& a, int64_t k, T w, std::vector<RowTap<T>>& taps) {
  for (int64_t ox0 = 0; ox0 < std::min(a.upx, a.out_w); ++ox0) {
    const int64_t s0 = ox0 * a.downx + k - a.padx0;
    if (phase_of(s0, a.upx) != 0) continue;
    int64_t ix = floor_div(s0, a.upx), ox = ox0;
    const int64_t skip = ix < 0 ? (-ix + a.downx - 1) / a.downx : 0;  // outputs whose input lies before the image
    ix += skip * a.downx;
    ox += skip * a.upx;
    if (ox >= a.out_w || ix >= a.in_w) continue;
    const int64_t count = std::min((a.out_w - ox + a.upx - 1) / a.upx, (a.in_w - ix + a.downx - 1) / a.downx);
    taps.push_back({ox, ix, count, w});
  }
}

template <typename T>
GMK_CPU_INLINE void apply_row_loop(T* acc, const T* in, const RowTap<T>* taps, int64_t n_taps, int64_t upx,
                                   int64_t downx, int64_t lanes) {
  for (int64_t i = 0; i < n_taps; ++i) {
    const RowTap<T> tap = taps[i];
    for (int64_t t = 0; t < tap.count; ++t) {
      T* a = acc + (tap.ox0 + upx * t) * lanes;
      const T* x = in + (tap.ix0 + downx * t) * lanes;
      for (int64_t c = 0; c < lanes; ++c) a[c] += tap.w * x[c];
    }
  }
}
GMK_CPU_CLONES void apply_row(float* acc, const float* in, const RowTap<float>* taps, int64_t n_taps, int64_t upx,
                              int64_t downx, int64_t lanes) {
  apply_row_loop(acc, in, taps, n_taps, upx, downx, lanes);
}
void apply_row(double* acc, const double* in, const RowTap<double>* taps, int64_t n_taps, int64_t upx, int64_t downx,
               int64_t lanes) {
  apply_row_loop(acc, in, taps, n_taps, upx, downx, lanes);
}

template <typename scalar_t>
void run_channels_last(const Args& a) {
  using opmath_t = at::opmath_type<scalar_t>;
  const auto* f = static_cast<const opmath_t*>(a.f);
  std::vector<std::vector<RowTap<opmath_t>>> taps(a.fh);  // taps[j]: the horizontal taps of tap row j
  for (int64_t j = 0; j < a.fh; ++j) {
    for (int64_t k = 0; k < a.fw; ++k) add_row_taps(a, k, weight(a, f, j, k), taps[j]);
  }
  const int64_t lanes = a.channels, rows = a.batch * a.out_h;
  const int64_t macs_per_row = std::max<int64_t>(1, a.fh * a.fw * a.out_w * lanes / (a.upx * a.upy));
  const auto* x = static_cast<const scalar_t*>(a.x);
  auto* out = static_cast<scalar_t*>(a.out);
  const int64_t* xs = a.x_strides;
  at::parallel_for(0, rows, std::max<int64_t>(1, kGrainMacs / macs_per_row), [&](int64_t begin, int64_t end) {
    std::vector<opmath_t> acc(a.out_w * lanes), in_row(a.in_w * lanes);
    for (int64_t row = begin; row < end; ++row) {
      const int64_t n = row / a.out_h, oy = row % a.out_h;
      std::fill(acc.begin(), acc.end(), opmath_t(0));
      for (int64_t j = 0; j < a.fh; ++j) {
        const int64_t r = oy * a.downy + j - a.pady0;
        if (r < 0 || r >= a.in_h * a.upy || r % a.upy != 0) continue;
        const scalar_t* src = x + n * xs[0] + (r / a.upy) * xs[2];
        for (int64_t ix = 0; ix < a.in_w; ++ix) {
          for (int64_t c = 0; c < lanes; ++c) in_row[ix * lanes + c] = static_cast<opmath_t>(src[ix * xs[3] + c * xs[1]]);
        }
        apply_row(acc.data(), in_row.data(), taps[j].data(), static_cast<int64_t>(taps[j].size()), a.upx, a.downx,
                  lanes);
      }
      scalar_t* dst = out + (n * a.out_h + oy) * a.out_w * a.channels;  // (n, oy, :, :) of a channels_last out
      for (int64_t i = 0; i < a.out_w * lanes; ++i) dst[i] = static_cast<scalar_t>(acc[i]);
    }
  });
}

}  // namespace

void run_cpu(const Args& args) {
  with_scalar_type(args.dtype, [&](auto tag) {
    using scalar_t = decltype(tag);
    args.out_channels_last ? run_channels_last<scalar_t>(args) : run_planar<scalar_t>(args);
  });
}

}  // namespace gmk::upfirdn2d
