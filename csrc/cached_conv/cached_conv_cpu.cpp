// CPU kernel of cached_conv2d. The (sample, output column) pairs are taken in tiles of at most
// kTileElements / max(K, Cout) pairs (the scratch of a task is bounded, whatever the sizes; tiles run in
// parallel): a tile's windows are gathered into a (pairs, K) matrix in the compute type (float, double for
// float64) and multiplied by the weight in one GEMM (ATen's at::mm, MKL's or oneDNN's) into (pairs, Cout),
// written out per sample in runs of columns. One pair: each output channel is a dot product of its weight
// row with the window (compiled per instruction set, GMK_CPU_CLONES). Half-type weights are converted once
// per call.
#include <ATen/Functions.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <type_traits>
#include <vector>

#include "gmk/aten.h"
#include "gmk/cached_conv.h"
#include "gmk/cpu_math.h"

namespace gmk::cached_conv {
namespace {

// Elements of one tile's window matrix and of its product (each at most this, 1 MB in float; a smaller
// tile was up to 30 % slower on 320-channel rows). A pair whose taps or output channels alone exceed it is a
// tile of its own.
constexpr int64_t kTileElements = 1 << 18;
constexpr int64_t kMinTilePairs = 64;  // the smallest tile that splits a call among threads
constexpr int kLanes = 16;  // independent partial sums: the loop vectorises without reassociation

template <typename T>
GMK_CPU_INLINE T dot_of(const T* a, const T* b, int64_t n) {
  T partial[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    for (int j = 0; j < kLanes; ++j) partial[j] += a[i + j] * b[i + j];
  }
  for (; i < n; ++i) partial[0] += a[i] * b[i];
  T sum = 0;
  for (int j = 0; j < kLanes; ++j) sum += partial[j];
  return sum;
}

GMK_CPU_CLONES float dot(const float* a, const float* b, int64_t n) { return dot_of(a, b, n); }
GMK_CPU_CLONES double dot(const double* a, const double* b, int64_t n) { return dot_of(a, b, n); }

template <typename opmath_t, typename scalar_t>
std::vector<opmath_t> converted(const void* p, int64_t n) {
  std::vector<opmath_t> out(n, opmath_t(0));
  if (p == nullptr) return out;
  const auto* in = static_cast<const scalar_t*>(p);
  for (int64_t i = 0; i < n; ++i) out[i] = static_cast<opmath_t>(in[i]);
  return out;
}

// The windows of pairs first … first + m - 1 (pair = n·count + t) into `windows` (m, K), taps in (c, a, b)
// order, as the weight's.
template <typename opmath_t, typename scalar_t>
void gather(const Args& args, int64_t first, int64_t m, opmath_t* windows) {
  const auto* rows = static_cast<const scalar_t*>(args.rows);
  for (int64_t pair = first; pair < first + m; ++pair) {
    const scalar_t* start = rows + args.offset(pair / args.count, pair % args.count, 0);
    for (int64_t c = 0; c < args.in_channels; ++c) {
      for (int64_t a = 0; a < args.kh; ++a) {
        const scalar_t* row = start + c * args.s_channel + a * args.s_row;
        for (int64_t b = 0; b < args.kw; ++b) *windows++ = static_cast<opmath_t>(row[b * args.s_column]);
      }
    }
  }
}

// out[n, o, t] = bias[o] + products[pair - first, o] for the tile's pairs, per sample in runs of columns.
template <typename opmath_t, typename scalar_t>
void scatter(const Args& args, int64_t first, int64_t m, const opmath_t* products, const opmath_t* bias) {
  auto* out = static_cast<scalar_t*>(args.out);
  const int64_t outs = args.out_channels, count = args.count;
  for (int64_t pair = first; pair < first + m;) {
    const int64_t n = pair / count, t0 = pair % count, run = std::min(count - t0, first + m - pair);
    for (int64_t o = 0; o < outs; ++o) {
      const opmath_t* p = products + (pair - first) * outs + o;
      scalar_t* y = out + (n * outs + o) * count + t0;
      for (int64_t t = 0; t < run; ++t) y[t] = static_cast<scalar_t>(bias[o] + p[t * outs]);
    }
    pair += run;
  }
}

template <typename opmath_t, typename scalar_t>
void one_pair(const Args& args, const opmath_t* weight, const opmath_t* bias) {
  std::vector<opmath_t> window(args.taps());
  gather<opmath_t, scalar_t>(args, 0, 1, window.data());
  auto* out = static_cast<scalar_t*>(args.out);
  for (int64_t o = 0; o < args.out_channels; ++o) {
    out[o] = static_cast<scalar_t>(bias[o] + dot(weight + o * args.taps(), window.data(), args.taps()));
  }
}

template <typename scalar_t>
void run_typed(const Args& args) {
  using opmath_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
  const int64_t taps = args.taps(), outs = args.out_channels;
  std::vector<opmath_t> weight_copy;
  const opmath_t* weight;
  if constexpr (std::is_same_v<scalar_t, opmath_t>) {
    weight = static_cast<const opmath_t*>(args.weight);
  } else {
    weight_copy = converted<opmath_t, scalar_t>(args.weight, outs * taps);
    weight = weight_copy.data();
  }
  const std::vector<opmath_t> bias = converted<opmath_t, scalar_t>(args.bias, outs);
  const int64_t pairs = args.batch * args.count;
  if (pairs == 1) return one_pair<opmath_t, scalar_t>(args, weight, bias.data());
  // tiles of (nearly) equal size, at least one per thread while they keep kMinTilePairs pairs; the last
  // tile is shorter, never empty
  const int64_t largest = std::max<int64_t>(1, kTileElements / std::max(taps, outs));
  const int64_t per_thread = std::min<int64_t>(at::get_num_threads(), pairs / kMinTilePairs);
  const int64_t wanted = std::max((pairs + largest - 1) / largest, per_thread);
  const int64_t tile = (pairs + wanted - 1) / wanted, tiles = (pairs + tile - 1) / tile;
  const auto options = at::TensorOptions().dtype(std::is_same_v<opmath_t, double> ? at::kDouble : at::kFloat);
  const at::Tensor w = at::from_blob(const_cast<opmath_t*>(weight), {outs, taps}, options);
  at::parallel_for(0, tiles, 1, [&](int64_t begin, int64_t end) {
    std::vector<opmath_t> windows(tile * taps), products(tile * outs);
    for (int64_t index = begin; index < end; ++index) {
      const int64_t first = index * tile, m = std::min(tile, pairs - first);
      gather<opmath_t, scalar_t>(args, first, m, windows.data());
      at::Tensor product = at::from_blob(products.data(), {m, outs}, options);
      at::mm_out(product, at::from_blob(windows.data(), {m, taps}, options), w.t());
      scatter<opmath_t, scalar_t>(args, first, m, products.data(), bias.data());
    }
  });
}

}  // namespace

void run_cpu(const Args& args) {
  with_scalar_type(args.dtype, [&](auto tag) { run_typed<decltype(tag)>(args); });
}

}  // namespace gmk::cached_conv
