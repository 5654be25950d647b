// CPU kernel of cached_conv2d: per (sample, output column) the window is gathered into a buffer in the
// compute type (float, double for float64), then each output channel is a dot product of its weight row
// with it (compiled per instruction set, GMK_CPU_CLONES). Half-type weights are converted once per call.
#include <ATen/Parallel.h>

#include <algorithm>
#include <type_traits>
#include <vector>

#include "gmk/aten.h"
#include "gmk/cached_conv.h"
#include "gmk/cpu_math.h"

namespace gmk::cached_conv {
namespace {

constexpr int64_t kGrainMacs = 1 << 18;  // at least this many multiply-adds per parallel task
constexpr int kLanes = 16;               // independent partial sums: the loop vectorises without reassociation

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

template <typename scalar_t>
void run_typed(const Args& args) {
  using opmath_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
  const int64_t taps = args.taps(), outs = args.out_channels, count = args.count;
  std::vector<opmath_t> weight_copy;
  const opmath_t* weight;
  if constexpr (std::is_same_v<scalar_t, opmath_t>) {
    weight = static_cast<const opmath_t*>(args.weight);
  } else {
    weight_copy = converted<opmath_t, scalar_t>(args.weight, outs * taps);
    weight = weight_copy.data();
  }
  const std::vector<opmath_t> bias = converted<opmath_t, scalar_t>(args.bias, outs);
  const auto* rows = static_cast<const scalar_t*>(args.rows);
  auto* out = static_cast<scalar_t*>(args.out);
  const int64_t grain = std::max<int64_t>(1, kGrainMacs / std::max<int64_t>(1, outs * taps));
  at::parallel_for(0, args.batch * count, grain, [&](int64_t begin, int64_t end) {
    std::vector<opmath_t> window(taps);
    for (int64_t pair = begin; pair < end; ++pair) {
      const int64_t n = pair / count, t = pair % count;
      for (int64_t k = 0; k < taps; ++k) window[k] = static_cast<opmath_t>(rows[args.offset(n, t, k)]);
      scalar_t* column = out + n * outs * count + t;
      for (int64_t o = 0; o < outs; ++o) {
        column[o * count] = static_cast<scalar_t>(bias[o] + dot(weight + o * taps, window.data(), taps));
      }
    }
  });
}

}  // namespace

void run_cpu(const Args& args) {
  with_scalar_type(args.dtype, [&](auto tag) { run_typed<decltype(tag)>(args); });
}

}  // namespace gmk::cached_conv
