// CPU kernel of cached_conv2d: the windows of the (sample, output column) pairs are gathered into a
// (pairs, K) matrix in the compute type (float, double for float64). One pair: each output channel is a dot
// product of its weight row with the window (compiled per instruction set, GMK_CPU_CLONES); several: one
// GEMM with the weight (ATen's at::mm, MKL's or oneDNN's). Half-type weights are converted once per call.
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

constexpr int64_t kGrainElements = 1 << 16;  // at least this many window elements gathered per task
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
  const int64_t pairs = args.batch * count;
  std::vector<opmath_t> windows(pairs * taps);
  at::parallel_for(0, pairs, std::max<int64_t>(1, kGrainElements / std::max<int64_t>(1, taps)),
                   [&](int64_t begin, int64_t end) {
    for (int64_t pair = begin; pair < end; ++pair) {
      const int64_t n = pair / count, t = pair % count;
      opmath_t* window = windows.data() + pair * taps;
      const scalar_t* first = rows + args.offset(n, t, 0);
      for (int64_t c = 0; c < args.in_channels; ++c) {  // taps in (c, a, b) order, as the weight's
        for (int64_t a = 0; a < args.kh; ++a) {
          const scalar_t* row = first + c * args.s_channel + a * args.s_row;
          for (int64_t b = 0; b < args.kw; ++b) *window++ = static_cast<opmath_t>(row[b * args.s_column]);
        }
      }
    }
  });
  if (pairs == 1) {
    for (int64_t o = 0; o < outs; ++o) {
      out[o] = static_cast<scalar_t>(bias[o] + dot(weight + o * taps, windows.data(), taps));
    }
    return;
  }
  const auto type = std::is_same_v<opmath_t, double> ? at::kDouble : at::kFloat;
  const at::Tensor a = at::from_blob(windows.data(), {pairs, taps}, at::TensorOptions().dtype(type));
  const at::Tensor w = at::from_blob(const_cast<opmath_t*>(weight), {outs, taps}, at::TensorOptions().dtype(type));
  const at::Tensor products = at::mm(a, w.t());  // (pairs, outs), contiguous
  const opmath_t* p = products.const_data_ptr<opmath_t>();
  for (int64_t n = 0; n < args.batch; ++n) {  // out[n, o, t] = bias[o] + products[n * count + t, o]
    for (int64_t o = 0; o < outs; ++o) {
      for (int64_t t = 0; t < count; ++t) {
        out[(n * outs + o) * count + t] = static_cast<scalar_t>(bias[o] + p[(n * count + t) * outs + o]);
      }
    }
  }
}

}  // namespace

void run_cpu(const Args& args) {
  with_scalar_type(args.dtype, [&](auto tag) { run_typed<decltype(tag)>(args); });
}

}  // namespace gmk::cached_conv
