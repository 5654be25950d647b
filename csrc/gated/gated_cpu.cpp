// CPU kernels of the gated activation. Each row (o, c) of the output is cut into runs of up to
// kRun elements: the run's a and b (x + cond) are gathered into float buffers (a plain copy when
// the row is contiguous), the math runs as vectorisable loops over the buffers (gmk/cpu_math.h),
// and the results are converted into the output row.
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <algorithm>

#include "gmk/aten.h"
#include "gmk/cpu_math.h"
#include "gmk/gated.h"

namespace gmk::gated {
namespace {

constexpr int64_t kRun = 256;
// At least this many elements go to one parallel task.
constexpr int64_t kGrainElements = 1 << 15;

// A run: row (o, c), elements [i0, i0 + n) along inner.
struct Run {
  int64_t o, c, i0, n;
};

template <typename Body>
void for_each_run(const Args& args, Body body) {
  const int64_t runs_per_row = (args.inner + kRun - 1) / kRun;
  const int64_t runs = args.outer * args.half * runs_per_row;
  const int64_t grain = std::max<int64_t>(1, kGrainElements / std::min(kRun, args.inner));
  at::parallel_for(0, runs, grain, [&](int64_t begin, int64_t end) {
    for (int64_t run = begin; run < end; ++run) {
      const int64_t row = run / runs_per_row, i0 = (run % runs_per_row) * kRun;
      body(Run{row / args.half, row % args.half, i0, std::min(kRun, args.inner - i0)});
    }
  });
}

// out[j] (+)= base[o, c, i0 + j] for j < n, in the math type.
template <bool kAdd, typename scalar_t, typename opmath_t>
void gather(const void* base, const Strides3& s, const Run& r, int64_t c, opmath_t* out) {
  const scalar_t* p = static_cast<const scalar_t*>(base) + r.o * s.outer + c * s.channel + r.i0 * s.inner;
  if (s.inner == 1) {
    for (int64_t j = 0; j < r.n; ++j) out[j] = (kAdd ? out[j] : opmath_t(0)) + static_cast<opmath_t>(p[j]);
  } else {
    for (int64_t j = 0; j < r.n; ++j) {
      out[j] = (kAdd ? out[j] : opmath_t(0)) + static_cast<opmath_t>(p[j * s.inner]);
    }
  }
}

// a, b: the halves of x + cond over the run.
template <typename scalar_t, typename opmath_t>
void load_halves(const Args& args, const Run& r, opmath_t* a, opmath_t* b) {
  gather<false, scalar_t>(args.x, args.x_strides, r, r.c, a);
  gather<false, scalar_t>(args.x, args.x_strides, r, r.c + args.half, b);
  if (args.cond) {
    gather<true, scalar_t>(args.cond, args.cond_strides, r, r.c, a);
    gather<true, scalar_t>(args.cond, args.cond_strides, r, r.c + args.half, b);
  }
}

template <typename scalar_t, typename opmath_t>
void store(const opmath_t* in, int64_t n, scalar_t* out) {
  for (int64_t j = 0; j < n; ++j) out[j] = static_cast<scalar_t>(in[j]);
}

// The math of gmk/gated.h over a run, on the vectorisable functions of gmk/cpu_math.h:
// y = f(a) sigmoid(b) into a; backward: grad_a into a, grad_b into b.
template <bool kTanh, typename T>
GMK_CPU_INLINE void forward_math(T* a, const T* b, int64_t n) {
  for (int64_t j = 0; j < n; ++j) a[j] = forward<kTanh, cpu::Math>(a[j], b[j]);
}

template <bool kTanh, typename T>
GMK_CPU_INLINE void backward_math(T* a, T* b, const T* grad_y, int64_t n) {
  for (int64_t j = 0; j < n; ++j) backward<kTanh, cpu::Math>(a[j], b[j], grad_y[j], a[j], b[j]);
}

// The loops, compiled once per instruction set for float (see GMK_CPU_CLONES).
template <typename T>
GMK_CPU_INLINE void forward_loop(bool tanh, T* a, const T* b, int64_t n) {
  tanh ? forward_math<true>(a, b, n) : forward_math<false>(a, b, n);
}
template <typename T>
GMK_CPU_INLINE void backward_loop(bool tanh, T* a, T* b, const T* grad_y, int64_t n) {
  tanh ? backward_math<true>(a, b, grad_y, n) : backward_math<false>(a, b, grad_y, n);
}

GMK_CPU_CLONES void forward_run(bool tanh, float* a, const float* b, int64_t n) { forward_loop(tanh, a, b, n); }
void forward_run(bool tanh, double* a, const double* b, int64_t n) { forward_loop(tanh, a, b, n); }
GMK_CPU_CLONES void backward_run(bool tanh, float* a, float* b, const float* grad_y, int64_t n) {
  backward_loop(tanh, a, b, grad_y, n);
}
void backward_run(bool tanh, double* a, double* b, const double* grad_y, int64_t n) {
  backward_loop(tanh, a, b, grad_y, n);
}

template <typename scalar_t>
void forward_typed(const Args& args) {
  using opmath_t = at::opmath_type<scalar_t>;
  auto* y = static_cast<scalar_t*>(args.out);
  for_each_run(args, [&](const Run& r) {
    opmath_t a[kRun], b[kRun];
    load_halves<scalar_t>(args, r, a, b);
    forward_run(args.tanh, a, b, r.n);
    store(a, r.n, y + (r.o * args.half + r.c) * args.inner + r.i0);
  });
}

template <typename scalar_t>
void backward_typed(const Args& args) {
  using opmath_t = at::opmath_type<scalar_t>;
  const auto* grad_y = static_cast<const scalar_t*>(args.grad_y);
  auto* grad_h = static_cast<scalar_t*>(args.out);
  for_each_run(args, [&](const Run& r) {
    opmath_t a[kRun], b[kRun], gy[kRun];
    load_halves<scalar_t>(args, r, a, b);
    const scalar_t* gy_run = grad_y + (r.o * args.half + r.c) * args.inner + r.i0;
    for (int64_t j = 0; j < r.n; ++j) gy[j] = static_cast<opmath_t>(gy_run[j]);
    backward_run(args.tanh, a, b, gy, r.n);
    scalar_t* grad_a = grad_h + (r.o * 2 * args.half + r.c) * args.inner + r.i0;
    store(a, r.n, grad_a);
    store(b, r.n, grad_a + args.half * args.inner);
  });
}

}  // namespace

void forward_cpu(const Args& args) {
  with_scalar_type(args.dtype, [&](auto tag) { forward_typed<decltype(tag)>(args); });
}
void backward_cpu(const Args& args) {
  with_scalar_type(args.dtype, [&](auto tag) { backward_typed<decltype(tag)>(args); });
}

}  // namespace gmk::gated
