// CPU kernel of upfirdn2d, polyphase: each output row sums the input rows its vertical taps reach
// (only the rows on the upsampling grid), and along a row each horizontal tap k feeds the outputs
// ox = ox0 + up_x * t from the inputs ix = ix0 + down_x * t, one axpy per (tap, phase): no multiply
// by an inserted zero. Planar outputs (NCHW) run one row of one channel per task, the axpy along x;
// channels_last outputs run one row of all channels per task, the axpy along the channels.
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

// acc[i * acc_step] += w * x[i * x_step] for i < n.
template <typename T>
GMK_CPU_INLINE void axpy_loop(T* acc, int64_t acc_step, const T* x, int64_t x_step, T w, int64_t n) {
  if (acc_step == 1 && x_step == 1) {
    for (int64_t i = 0; i < n; ++i) acc[i] += w * x[i];
  } else {
    for (int64_t i = 0; i < n; ++i) acc[i * acc_step] += w * x[i * x_step];
  }
}
GMK_CPU_CLONES void axpy(float* acc, int64_t acc_step, const float* x, int64_t x_step, float w, int64_t n) {
  axpy_loop(acc, acc_step, x, x_step, w, n);
}
void axpy(double* acc, int64_t acc_step, const double* x, int64_t x_step, double w, int64_t n) {
  axpy_loop(acc, acc_step, x, x_step, w, n);
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
  // w[j][k] = gain * the filter tap multiplying U[oy * downy + j - pady0, ox * downx + k - padx0]
  std::vector<opmath_t> w(a.fh * a.fw);
  for (int64_t j = 0; j < a.fh; ++j) {
    for (int64_t k = 0; k < a.fw; ++k) {
      w[j * a.fw + k] = static_cast<opmath_t>(a.gain) *
                        f[tap_index(j, a.fh, a.flip_filter) * a.fw + tap_index(k, a.fw, a.flip_filter)];
    }
  }
  std::vector<std::vector<Phase>> phases(a.fw);
  for (int64_t k = 0; k < a.fw; ++k) phases[k] = phases_of(a, k);

  const bool interleaved = a.out_channels_last;
  const int64_t lanes = interleaved ? a.channels : 1;  // values per pixel in a row buffer
  const int64_t planes = interleaved ? a.batch : a.batch * a.channels;
  const int64_t rows = planes * a.out_h;
  const int64_t macs_per_row = std::max<int64_t>(1, a.fh * a.fw * a.out_w * lanes / (a.upx * a.upy));
  const auto* x = static_cast<const scalar_t*>(a.x);
  auto* out = static_cast<scalar_t*>(a.out);
  const int64_t* xs = a.x_strides;

  at::parallel_for(0, rows, std::max<int64_t>(1, kGrainMacs / macs_per_row), [&](int64_t begin, int64_t end) {
    std::vector<opmath_t> acc(a.out_w * lanes), in_row(a.in_w * lanes);
    for (int64_t row = begin; row < end; ++row) {
      const int64_t plane = row / a.out_h, oy = row % a.out_h;
      const int64_t n = interleaved ? plane : plane / a.channels, c0 = interleaved ? 0 : plane % a.channels;
      std::fill(acc.begin(), acc.end(), opmath_t(0));
      for (int64_t j = 0; j < a.fh; ++j) {
        const int64_t r = oy * a.downy + j - a.pady0;
        if (r < 0 || r >= a.in_h * a.upy || r % a.upy != 0) continue;
        const scalar_t* src = x + n * xs[0] + c0 * xs[1] + (r / a.upy) * xs[2];
        for (int64_t ix = 0; ix < a.in_w; ++ix) {
          for (int64_t c = 0; c < lanes; ++c) in_row[ix * lanes + c] = static_cast<opmath_t>(src[ix * xs[3] + c * xs[1]]);
        }
        for (int64_t k = 0; k < a.fw; ++k) {
          const opmath_t wk = w[j * a.fw + k];
          for (const Phase& p : phases[k]) {
            if (lanes == 1) {
              axpy(acc.data() + p.ox0, a.upx, in_row.data() + p.ix0, a.downx, wk, p.count);
              continue;
            }
            for (int64_t t = 0; t < p.count; ++t) {
              axpy(acc.data() + (p.ox0 + a.upx * t) * lanes, 1, in_row.data() + (p.ix0 + a.downx * t) * lanes, 1, wk,
                   lanes);
            }
          }
        }
      }
      // out row: (n, c0, oy, :) of a contiguous out, or (n, oy, :, :) of a channels_last one
      scalar_t* dst = out + (interleaved ? (n * a.out_h + oy) * a.out_w * a.channels
                                         : ((n * a.channels + c0) * a.out_h + oy) * a.out_w);
      for (int64_t i = 0; i < a.out_w * lanes; ++i) dst[i] = static_cast<scalar_t>(acc[i]);
    }
  });
}

}  // namespace

void run_cpu(const Args& args) {
  with_scalar_type(args.dtype, [&](auto tag) { run_typed<decltype(tag)>(args); });
}

}  // namespace gmk::upfirdn2d
