// CPU kernel of upfirdn2d, polyphase: each output row sums the input rows its vertical taps reach
// (only the rows on the upsampling grid), and along a row each horizontal tap k feeds the outputs
// ox = ox0 + up_x * t from the inputs ix = ix0 + down_x * t, one axpy per (tap, phase): no multiply
// by an inserted zero. Planar outputs (NCHW) run one row of one channel per task, the axpy along x
// over rows split by phase (unit stride); channels_last outputs run one row of all channels per task,
// the axpy along the channels.
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <vector>

#include "gmk/aten.h"
#include "gmk/cpu_math.h"
#include "gmk/upfirdn2d.h"

namespace gmk::upfirdn2d {
namespace {

constexpr int64_t kGrainMacs = 1 << 16;  // multiply-adds per parallel task, at least

// One horizontal tap of one tap row, on one phase: acc outputs (ox0 + up_x * t) take w times the inputs
// (ix0 + down_x * t), t < count; offsets into the row buffers (phase-split for planar rows).
template <typename T>
struct RowTap {
  int64_t acc_offset, in_offset, count;
  T w;
};

// Planar rows: every tap is a unit-stride axpy over the phase-split buffers.
template <typename T>
GMK_CPU_INLINE void apply_planar_loop(T* acc, const T* in, const RowTap<T>* taps, int64_t n_taps) {
  for (int64_t i = 0; i < n_taps; ++i) {
    const RowTap<T> tap = taps[i];
    T* a = acc + tap.acc_offset;
    const T* x = in + tap.in_offset;
    for (int64_t t = 0; t < tap.count; ++t) a[t] += tap.w * x[t];
  }
}

// Interleaved rows (channels_last): every output pixel of a tap is an axpy over the channels.
template <typename T>
GMK_CPU_INLINE void apply_interleaved_loop(T* acc, const T* in, const RowTap<T>* taps, int64_t n_taps, int64_t upx,
                                           int64_t downx, int64_t lanes) {
  for (int64_t i = 0; i < n_taps; ++i) {
    const RowTap<T> tap = taps[i];
    for (int64_t t = 0; t < tap.count; ++t) {
      T* a = acc + (tap.acc_offset + upx * t) * lanes;
      const T* x = in + (tap.in_offset + downx * t) * lanes;
      for (int64_t c = 0; c < lanes; ++c) a[c] += tap.w * x[c];
    }
  }
}

GMK_CPU_CLONES void apply_planar(float* acc, const float* in, const RowTap<float>* taps, int64_t n_taps) {
  apply_planar_loop(acc, in, taps, n_taps);
}
void apply_planar(double* acc, const double* in, const RowTap<double>* taps, int64_t n_taps) {
  apply_planar_loop(acc, in, taps, n_taps);
}
GMK_CPU_CLONES void apply_interleaved(float* acc, const float* in, const RowTap<float>* taps, int64_t n_taps,
                                      int64_t upx, int64_t downx, int64_t lanes) {
  apply_interleaved_loop(acc, in, taps, n_taps, upx, downx, lanes);
}
void apply_interleaved(double* acc, const double* in, const RowTap<double>* taps, int64_t n_taps, int64_t upx,
                       int64_t downx, int64_t lanes) {
  apply_interleaved_loop(acc, in, taps, n_taps, upx, downx, lanes);
}

// One horizontal tap's phase: outputs ox0 + upx * t take inputs ix0 + downx * t, t in [0, count).
struct Phase {
  int64_t ox0, ix0, count;
};

// The phases of horizontal tap k (k in the flipped-filter order: input s = ox * downx + k - padx0).
std::vector<Phase> phases_of(const Args& a, int64_t k) {
  std::vector<Phase> phases;
  for (int64_t ox0 = 0; ox0 < std::min(a.upx, a.out_w); ++ox0) {
    const int64_t s0 = ox0 * a.downx + k - a.padx0;
    if (s0 - floor_div(s0, a.upx) * a.upx != 0) continue;  // not on the upsampling grid
    int64_t ix = s0 / a.upx, ox = ox0;
    // skip the outputs whose input lies before the image: ix grows by downx per step
    const int64_t skip = ix < 0 ? (-ix + a.downx - 1) / a.downx : 0;
    ix += skip * a.downx;
    ox += skip * a.upx;
    if (ox >= a.out_w || ix >= a.in_w) continue;
    const int64_t count = std::min((a.out_w - ox + a.upx - 1) / a.upx, (a.in_w - ix + a.downx - 1) / a.downx);
    phases.push_back({ox, ix, count});
  }
  return phases;
}

template <typename scalar_t>
void run_typed(const Args& a) {
  using opmath_t = at::opmath_type<scalar_t>;
  const auto* f = static_cast<const opmath_t*>(a.f);
  const bool interleaved = a.out_channels_last;
  // Planar rows are kept split by phase so that every axpy is unit-stride: the input row as down_x rows
  // (pixel ix at [ix % down_x][ix / down_x]) and the accumulator as up_x rows (ox at [ox % up_x][ox / up_x]).
  const int64_t in_len = (a.in_w + a.downx - 1) / a.downx, acc_len = (a.out_w + a.upx - 1) / a.upx;
  // taps[j]: the horizontal taps of tap row j, w = gain * the filter tap that multiplies
  // U[oy * down_y + j - pad_y0, ox * down_x + k - pad_x0].
  std::vector<std::vector<RowTap<opmath_t>>> taps(a.fh);
  for (int64_t j = 0; j < a.fh; ++j) {
    for (int64_t k = 0; k < a.fw; ++k) {
      const opmath_t w = static_cast<opmath_t>(a.gain) *
                         f[tap_index(j, a.fh, a.flip_filter) * a.fw + tap_index(k, a.fw, a.flip_filter)];
      for (const Phase& p : phases_of(a, k)) {
        if (interleaved) {
          taps[j].push_back({p.ox0, p.ix0, p.count, w});
        } else {
          taps[j].push_back({(p.ox0 % a.upx) * acc_len + p.ox0 / a.upx, (p.ix0 % a.downx) * in_len + p.ix0 / a.downx,
                             p.count, w});
        }
      }
    }
  }

  const int64_t lanes = interleaved ? a.channels : 1;  // values per pixel in a row buffer
  const int64_t planes = interleaved ? a.batch : a.batch * a.channels;
  const int64_t rows = planes * a.out_h;
  const int64_t macs_per_row = std::max<int64_t>(1, a.fh * a.fw * a.out_w * lanes / (a.upx * a.upy));
  const auto* x = static_cast<const scalar_t*>(a.x);
  auto* out = static_cast<scalar_t*>(a.out);
  const int64_t* xs = a.x_strides;

  at::parallel_for(0, rows, std::max<int64_t>(1, kGrainMacs / macs_per_row), [&](int64_t begin, int64_t end) {
    std::vector<opmath_t> acc(interleaved ? a.out_w * lanes : a.upx * acc_len);
    std::vector<opmath_t> in_row(interleaved ? a.in_w * lanes : a.downx * in_len);
    for (int64_t row = begin; row < end; ++row) {
      const int64_t plane = row / a.out_h, oy = row % a.out_h;
      const int64_t n = interleaved ? plane : plane / a.channels, c0 = interleaved ? 0 : plane % a.channels;
      std::fill(acc.begin(), acc.end(), opmath_t(0));
      for (int64_t j = 0; j < a.fh; ++j) {
        const int64_t r = oy * a.downy + j - a.pady0;
        if (r < 0 || r >= a.in_h * a.upy || r % a.upy != 0) continue;
        const scalar_t* src = x + n * xs[0] + c0 * xs[1] + (r / a.upy) * xs[2];
        if (interleaved) {
          for (int64_t ix = 0; ix < a.in_w; ++ix) {
            for (int64_t c = 0; c < lanes; ++c) in_row[ix * lanes + c] = static_cast<opmath_t>(src[ix * xs[3] + c * xs[1]]);
          }
          apply_interleaved(acc.data(), in_row.data(), taps[j].data(), taps[j].size(), a.upx, a.downx, lanes);
        } else {
          for (int64_t phase = 0; phase < a.downx; ++phase) {
            opmath_t* dst = in_row.data() + phase * in_len;
            for (int64_t i = 0, ix = phase; ix < a.in_w; ++i, ix += a.downx) dst[i] = static_cast<opmath_t>(src[ix * xs[3]]);
          }
          apply_planar(acc.data(), in_row.data(), taps[j].data(), taps[j].size());
        }
      }
      // out row: (n, c0, oy, :) of a contiguous out, or (n, oy, :, :) of a channels_last one
      scalar_t* dst = out + (interleaved ? (n * a.out_h + oy) * a.out_w * a.channels
                                         : ((n * a.channels + c0) * a.out_h + oy) * a.out_w);
      if (interleaved) {
        for (int64_t i = 0; i < a.out_w * lanes; ++i) dst[i] = static_cast<scalar_t>(acc[i]);
      } else {
        for (int64_t phase = 0; phase < a.upx; ++phase) {
          const opmath_t* src = acc.data() + phase * acc_len;
          for (int64_t i = 0, ox = phase; ox < a.out_w; ++i, ox += a.upx) dst[ox] = static_cast<scalar_t>(src[i]);
        }
      }
    }
  });
}

}  // namespace

void run_cpu(const Args& args) {
  with_scalar_type(args.dtype, [&](auto tag) { run_typed<decltype(tag)>(args); });
}

}  // namespace gmk::upfirdn2d
