// CPU kernels of bias_act (forward, backward, backward2). The tensors are walked in memory order in
// runs of up to kRun elements. float32 and float64 runs whose channels come in segments of 16 elements
// or more (NCHW, or no bias) are computed straight from the tensors, one loop per segment; the others
// (half types, channels_last) convert each run's operands into float buffers with the bias added, and
// the result back. The loops vectorise (compiled per instruction set, GMK_CPU_CLONES).
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <type_traits>

#include "gmk/aten.h"
#include "gmk/bias_act.h"
#include "gmk/cpu_math.h"

namespace gmk::bias_act {
namespace {

constexpr int64_t kRun = 512;
constexpr int64_t kGrainElements = 1 << 16;  // at least this many elements per parallel task

// v[j] += b at element m0 + j, for the (outer, channels, inner) walk: constant over runs of inner
// elements (one channel), or b[c], b[c + 1], ... when inner == 1 (channels_last, or the last dim).
template <typename scalar_t, typename opmath_t>
void add_bias(const Args& args, int64_t m0, int64_t n, opmath_t* v) {
  const auto* b = static_cast<const scalar_t*>(args.b);
  const int64_t channels = args.channels, inner = args.inner;
  int64_t c = (m0 / inner) % channels, i = m0 % inner;
  for (int64_t j = 0; j < n;) {
    if (inner == 1) {
      const int64_t segment = std::min(n - j, channels - c);
      for (int64_t k = 0; k < segment; ++k) v[j + k] += static_cast<opmath_t>(b[c + k]);
      j += segment;
      c = 0;
    } else {
      const int64_t segment = std::min(n - j, inner - i);
      const opmath_t bias = static_cast<opmath_t>(b[c]);
      for (int64_t k = 0; k < segment; ++k) v[j + k] += bias;
      j += segment;
      i = 0;
      c = c + 1 == channels ? 0 : c + 1;
    }
  }
}

template <typename scalar_t, typename opmath_t>
void load(const void* base, int64_t m0, int64_t n, opmath_t* out) {
  const scalar_t* p = static_cast<const scalar_t*>(base) + m0;
  for (int64_t j = 0; j < n; ++j) out[j] = static_cast<opmath_t>(p[j]);
}

template <typename scalar_t, typename opmath_t>
void store(const opmath_t* in, int64_t m0, int64_t n, void* base) {
  scalar_t* p = static_cast<scalar_t*>(base) + m0;
  for (int64_t j = 0; j < n; ++j) p[j] = static_cast<scalar_t>(in[j]);
}

// The math over n elements: v = in[j] + bias (x + b; or y, bias 0), g = grad, g2 = grad2, written to out
// (which may be in). Templates on the act and the clamp, inlined into the per-ISA clones below so that
// each loop vectorises with no branch left in it.
template <Act kAct, bool kClamp, typename T>
GMK_CPU_INLINE void math_loops(Mode mode, bool reads_y, const T* in, T bias, const T* g, const T* g2, T* out,
                               int64_t n, Params<T> p) {
  p.has_clamp = kClamp;
  if (mode == Mode::Forward) {
    for (int64_t j = 0; j < n; ++j) out[j] = forward<kAct, cpu::Math>(in[j] + bias, p);
  } else if (mode == Mode::Backward2) {
    if constexpr (reads_x(kAct)) {
      for (int64_t j = 0; j < n; ++j) out[j] = backward2<kAct, cpu::Math>(g2[j], g[j], in[j] + bias, p);
    }
  } else if constexpr (reads_x(kAct)) {
    for (int64_t j = 0; j < n; ++j) out[j] = backward_from_x<kAct, cpu::Math>(g[j], in[j] + bias, p);
  } else if (reads_y) {
    for (int64_t j = 0; j < n; ++j) out[j] = backward_from_y<kAct>(g[j], in[j], p);
  } else {  // linear without a clamp reads neither x nor y: grad * gain
    for (int64_t j = 0; j < n; ++j) out[j] = g[j] * p.gain;
  }
}

template <Act kAct, typename T>
GMK_CPU_INLINE void math_for_act(Mode mode, bool reads_y, const T* in, T bias, const T* g, const T* g2, T* out,
                                 int64_t n, const Params<T>& p) {
  if (p.has_clamp) {
    math_loops<kAct, true>(mode, reads_y, in, bias, g, g2, out, n, p);
  } else {
    math_loops<kAct, false>(mode, reads_y, in, bias, g, g2, out, n, p);
  }
}

template <typename T>
GMK_CPU_INLINE void math_run(Mode mode, Act act, bool reads_y, const T* in, T bias, const T* g, const T* g2, T* out,
                             int64_t n, const Params<T>& p) {
  switch (act) {
#define GMK_BIAS_ACT_CASE(A) \
  case Act::A: return math_for_act<Act::A>(mode, reads_y, in, bias, g, g2, out, n, p);
    GMK_BIAS_ACT_CASE(Linear)
    GMK_BIAS_ACT_CASE(Relu)
    GMK_BIAS_ACT_CASE(Lrelu)
    GMK_BIAS_ACT_CASE(Tanh)
    GMK_BIAS_ACT_CASE(Sigmoid)
    GMK_BIAS_ACT_CASE(Elu)
    GMK_BIAS_ACT_CASE(Selu)
    GMK_BIAS_ACT_CASE(Softplus)
    GMK_BIAS_ACT_CASE(Swish)
#undef GMK_BIAS_ACT_CASE
  }
}

GMK_CPU_CLONES void run_math(Mode mode, Act act, bool reads_y, const float* in, float bias, const float* g,
                             const float* g2, float* out, int64_t n, const Params<float>& p) {
  math_run(mode, act, reads_y, in, bias, g, g2, out, n, p);
}
void run_math(Mode mode, Act act, bool reads_y, const double* in, double bias, const double* g, const double* g2,
              double* out, int64_t n, const Params<double>& p) {
  math_run(mode, act, reads_y, in, bias, g, g2, out, n, p);
}

// Segments of at least this many elements of one channel run straight from the tensors (float32 and
// float64); shorter ones (channels_last: one element) go through the run buffers with the bias added.
constexpr int64_t kMinDirectSegment = 16;

template <typename scalar_t>
void run_typed(const Args& args) {
  using opmath_t = at::opmath_type<scalar_t>;
  const bool reads_y = args.y != nullptr;
  // y holds a clamped value as the clamp rounded to the dtype: the mask compares with that.
  const double clamp = reads_y ? static_cast<double>(static_cast<scalar_t>(args.clamp)) : args.clamp;
  const Params<opmath_t> params{static_cast<opmath_t>(args.alpha), static_cast<opmath_t>(args.gain),
                                static_cast<opmath_t>(clamp), args.has_clamp};
  const int64_t elements = args.outer * args.channels * args.inner;
  const int64_t runs = (elements + kRun - 1) / kRun;
  const void* primary = args.mode == Mode::Backward && reads_y ? args.y : args.x;
  const bool adds_bias = args.b != nullptr && !reads_y;
  const bool direct = std::is_same_v<scalar_t, opmath_t> && (!adds_bias || args.inner >= kMinDirectSegment);
  at::parallel_for(0, runs, std::max<int64_t>(1, kGrainElements / kRun), [&](int64_t begin, int64_t end) {
    opmath_t v[kRun], g[kRun], g2[kRun];
    for (int64_t run = begin; run < end; ++run) {
      const int64_t m0 = run * kRun, n = std::min(kRun, elements - m0);
      if constexpr (std::is_same_v<scalar_t, opmath_t>) {
        if (direct) {  // segments of one channel, straight from the tensors
          const auto at = [m0](const void* p) { return p ? static_cast<const opmath_t*>(p) + m0 : nullptr; };
          const opmath_t *in = at(primary), *grad = at(args.grad), *grad2 = at(args.grad2);
          opmath_t* out = static_cast<opmath_t*>(args.out) + m0;
          int64_t c = (m0 / args.inner) % args.channels, i = m0 % args.inner;
          for (int64_t j = 0; j < n;) {
            const int64_t segment = adds_bias ? std::min(n - j, args.inner - i) : n - j;
            const opmath_t bias = adds_bias ? static_cast<const opmath_t*>(args.b)[c] : opmath_t(0);
            run_math(args.mode, args.act, reads_y, in ? in + j : nullptr, bias, grad ? grad + j : nullptr,
                     grad2 ? grad2 + j : nullptr, out + j, segment, params);
            j += segment;
            i = 0;
            c = c + 1 == args.channels ? 0 : c + 1;
          }
          continue;
        }
      }
      if (primary != nullptr) {
        load<scalar_t>(primary, m0, n, v);
        if (adds_bias) add_bias<scalar_t>(args, m0, n, v);
      }
      if (args.mode != Mode::Forward) load<scalar_t>(args.grad, m0, n, g);
      if (args.mode == Mode::Backward2) load<scalar_t>(args.grad2, m0, n, g2);
      run_math(args.mode, args.act, reads_y, v, opmath_t(0), g, g2, v, n, params);
      store<scalar_t>(v, m0, n, args.out);
    }
  });
}

}  // namespace

void run_cpu(const Args& args) {
  with_scalar_type(args.dtype, [&](auto tag) { run_typed<decltype(tag)>(args); });
}

}  // namespace gmk::bias_act
