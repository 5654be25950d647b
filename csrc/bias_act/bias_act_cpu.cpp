// CPU kernels of bias_act (forward, backward, backward2). The tensors are walked in memory order in
// runs of up to kRun elements: each run's operands are converted into float buffers (double for
// float64) with the bias added, the math runs as vectorisable loops over the buffers (compiled per
// instruction set, GMK_CPU_CLONES), and the result is converted into the output.
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <algorithm>

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

// The math over one run, in place in v (forward: v = x + b; backward: v = x + b or y, g = grad; backward2:
// v = x + b, g = grad, g2 = grad2). Inlined into the per-ISA clones below.
template <Act kAct, typename T>
GMK_CPU_INLINE void forward_loop(T* v, int64_t n, const Params<T>& p) {
  for (int64_t j = 0; j < n; ++j) v[j] = forward<kAct, cpu::Math>(v[j], p);
}

template <Act kAct, typename T>
GMK_CPU_INLINE void backward_loop(T* v, const T* g, int64_t n, const Params<T>& p) {
  if constexpr (reads_x(kAct)) {
    for (int64_t j = 0; j < n; ++j) v[j] = backward_from_x<kAct, cpu::Math>(g[j], v[j], p);
  } else {
    for (int64_t j = 0; j < n; ++j) v[j] = backward_from_y<kAct>(g[j], v[j], p);
  }
}

template <Act kAct, typename T>
GMK_CPU_INLINE void backward2_loop(T* v, const T* g, const T* g2, int64_t n, const Params<T>& p) {
  for (int64_t j = 0; j < n; ++j) v[j] = backward2<kAct, cpu::Math>(g2[j], g[j], v[j], p);
}

// The linear backward without a clamp reads neither x nor y: grad * gain.
template <typename T>
GMK_CPU_INLINE void scale_loop(T* v, const T* g, int64_t n, T gain) {
  for (int64_t j = 0; j < n; ++j) v[j] = g[j] * gain;
}

template <typename T>
GMK_CPU_INLINE void math_run(Mode mode, Act act, bool reads_y, T* v, const T* g, const T* g2, int64_t n,
                             const Params<T>& p) {
  if (mode == Mode::Backward && !reads_x(act) && !reads_y) return scale_loop(v, g, n, p.gain);
  with_act(act, [&](auto tag) {
    constexpr Act kAct = decltype(tag)::value;
    if (mode == Mode::Forward) {
      forward_loop<kAct>(v, n, p);
    } else if (mode == Mode::Backward) {
      backward_loop<kAct>(v, g, n, p);
    } else if constexpr (reads_x(kAct)) {
      backward2_loop<kAct>(v, g, g2, n, p);
    }
  });
}

GMK_CPU_CLONES void run_math(Mode mode, Act act, bool reads_y, float* v, const float* g, const float* g2, int64_t n,
                             const Params<float>& p) {
  math_run(mode, act, reads_y, v, g, g2, n, p);
}
void run_math(Mode mode, Act act, bool reads_y, double* v, const double* g, const double* g2, int64_t n,
              const Params<double>& p) {
  math_run(mode, act, reads_y, v, g, g2, n, p);
}

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
  at::parallel_for(0, runs, std::max<int64_t>(1, kGrainElements / kRun), [&](int64_t begin, int64_t end) {
    opmath_t v[kRun], g[kRun], g2[kRun];
    for (int64_t run = begin; run < end; ++run) {
      const int64_t m0 = run * kRun, n = std::min(kRun, elements - m0);
      const void* primary = args.mode == Mode::Backward && reads_y ? args.y : args.x;
      if (primary != nullptr) {
        load<scalar_t>(primary, m0, n, v);
        if (args.b != nullptr && !reads_y) add_bias<scalar_t>(args, m0, n, v);
      }
      if (args.mode != Mode::Forward) load<scalar_t>(args.grad, m0, n, g);
      if (args.mode == Mode::Backward2) load<scalar_t>(args.grad2, m0, n, g2);
      run_math(args.mode, args.act, reads_y, v, g, g2, n, params);
      store<scalar_t>(v, m0, n, args.out);
    }
  });
}

}  // namespace

void run_cpu(const Args& args) {
  with_scalar_type(args.dtype, [&](auto tag) { run_typed<decltype(tag)>(args); });
}

}  // namespace gmk::bias_act
