// CPU kernels of the coupling layer. Work is split by rows (o, c) of x_b, c < half; each row is
// cut into runs of up to kRun elements, and the math of gmk/coupling.h runs over a run as a
// vectorisable loop (gmk/cpu_math.h) that reads x_b (grad_y_b), r and t and writes the output rows
// in place where they are contiguous float or double, through buffers of the math type otherwise
// (strided inputs, half types). The row of x_a (grad_y_a) is copied through on the way. The forward
// keeps one double partial sum of log s per row and adds a sample's rows in order at the end: the
// same logdet for any number of threads. Checkerboard layouts: a row is one channel of x; its runs
// stay within a spatial row (x_a and x_b alternate along it), every element is transformed and then
// x_a's elements (every other one) are passed through: y = x, zero log s, gradients as identity.
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <type_traits>
#include <vector>

#include "gmk/coupling.h"
#include "gmk/aten.h"
#include "gmk/cpu_math.h"

namespace gmk::coupling {
namespace {

constexpr int64_t kRun = 256;
constexpr int64_t kGrainElements = 1 << 14;  // at least this many elements of x_b per parallel task

// Calls body(o, c) for every row of x_b, in parallel.
template <typename Body>
void for_each_row(const Args& args, Body body) {
  const int64_t grain = std::max<int64_t>(1, kGrainElements / std::max<int64_t>(1, args.inner));
  at::parallel_for(0, args.outer * args.half, grain, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) body(row / args.half, row % args.half);
  });
}

// The run [i0, i0 + n) of row (o, c) of a tensor, in the math type: the row itself where it is
// contiguous and already of that type, else a copy in buffer.
template <typename scalar_t, typename opmath_t>
const opmath_t* read_run(const void* base, const Strides3& s, int64_t o, int64_t c, int64_t i0, int64_t n,
                         opmath_t* buffer) {
  const scalar_t* p = static_cast<const scalar_t*>(base) + o * s.outer + c * s.channel + i0 * s.inner;
  if constexpr (std::is_same_v<scalar_t, opmath_t>) {
    if (s.inner == 1) return p;
  }
  for (int64_t j = 0; j < n; ++j) buffer[j] = static_cast<opmath_t>(p[j * s.inner]);
  return buffer;
}

// Where the math writes a run of a contiguous output row: the row itself for float and double, else
// buffer, which finish_run then converts into the row.
template <typename scalar_t, typename opmath_t>
opmath_t* write_run(scalar_t* row, opmath_t* buffer) {
  if constexpr (std::is_same_v<scalar_t, opmath_t>) {
    return row;
  } else {
    return buffer;
  }
}

template <typename scalar_t, typename opmath_t>
void finish_run(const opmath_t* buffer, int64_t n, scalar_t* row) {
  if constexpr (!std::is_same_v<scalar_t, opmath_t>) {
    for (int64_t j = 0; j < n; ++j) row[j] = static_cast<scalar_t>(buffer[j]);
  }
}

// y_a = x_a: row (o, c) of x copied into the contiguous row out (same dtype).
template <typename scalar_t>
void copy_row(const void* base, const Strides3& s, int64_t o, int64_t c, int64_t n, scalar_t* out) {
  const scalar_t* p = static_cast<const scalar_t*>(base) + o * s.outer + c * s.channel;
  if (s.inner == 1) {
    std::copy(p, p + n, out);
  } else {
    for (int64_t j = 0; j < n; ++j) out[j] = p[j * s.inner];
  }
}

// --- the math over a run, compiled once per instruction set for float ---------------------------

// out[j] = image of z[j], log_s[j] = log s; returns the sum of log s (in double, 4 partial sums).
// __restrict__: the outputs never overlap the inputs (fresh tensors or buffers), which lets the
// compiler vectorise without runtime overlap checks (too many of them for the backward's 7 arrays).
// pass_from: the first x_a element of a checkerboard run (x_a at pass_from, pass_from + 2, ...), or
// n when every element is x_b.
template <Transform kTransform, bool kReverse, typename T>
GMK_CPU_INLINE double forward_math(const T* __restrict__ z, const T* __restrict__ r, const T* __restrict__ t,
                                   T* __restrict__ out, T* __restrict__ log_s, int64_t n, int64_t pass_from) {
  for (int64_t j = 0; j < n; ++j) {
    out[j] = apply<kTransform, kReverse, cpu::Math>(z[j], kTransform == Transform::Additive ? T(0) : r[j], t[j],
                                                    log_s[j]);
  }
  for (int64_t j = pass_from; j < n; j += 2) {
    out[j] = z[j];
    log_s[j] = T(0);
  }
  if constexpr (kTransform == Transform::Additive) return 0.0;
  double sums[4] = {0.0, 0.0, 0.0, 0.0};
  int64_t j = 0;
  for (; j + 4 <= n; j += 4) {
    for (int k = 0; k < 4; ++k) sums[k] += static_cast<double>(log_s[j + k]);
  }
  for (; j < n; ++j) sums[0] += static_cast<double>(log_s[j]);
  return (sums[0] + sums[1]) + (sums[2] + sums[3]);
}

// The gradients of z, r and t for the output gradient g and the sample's logdet gradient.
template <Transform kTransform, bool kReverse, typename T>
GMK_CPU_INLINE void backward_math(const T* __restrict__ z, const T* __restrict__ r, const T* __restrict__ t,
                                  const T* __restrict__ g, T grad_logdet, T* __restrict__ grad_z,
                                  T* __restrict__ grad_r, T* __restrict__ grad_t, int64_t n, int64_t pass_from) {
  for (int64_t j = 0; j < n; ++j) {
    T gz, gr, gt;
    backward<kTransform, kReverse, cpu::Math>(z[j], kTransform == Transform::Additive ? T(0) : r[j], t[j], g[j],
                                              grad_logdet, gz, gr, gt);
    grad_z[j] = gz;
    if constexpr (kTransform != Transform::Additive) grad_r[j] = gr;
    grad_t[j] = gt;
  }
  for (int64_t j = pass_from; j < n; j += 2) {
    grad_z[j] = g[j];
    if constexpr (kTransform != Transform::Additive) grad_r[j] = T(0);
    grad_t[j] = T(0);
  }
}

// Calls fn.template operator()<kTransform, kReverse>() for the runtime transform and direction.
template <typename Fn>
GMK_CPU_INLINE auto with_transform(Transform transform, bool reverse, Fn&& fn) {
  switch (transform) {
    case Transform::Glow:
      return reverse ? fn.template operator()<Transform::Glow, true>()
                     : fn.template operator()<Transform::Glow, false>();
    case Transform::RealNVP:
      return reverse ? fn.template operator()<Transform::RealNVP, true>()
                     : fn.template operator()<Transform::RealNVP, false>();
    default:
      return reverse ? fn.template operator()<Transform::Additive, true>()
                     : fn.template operator()<Transform::Additive, false>();
  }
}

template <typename T>
GMK_CPU_INLINE double forward_loop(Transform transform, bool reverse, const T* z, const T* r, const T* t, T* out,
                                   T* log_s, int64_t n, int64_t pass_from) {
  return with_transform(transform, reverse, [&]<Transform kTransform, bool kReverse>() {
    return forward_math<kTransform, kReverse>(z, r, t, out, log_s, n, pass_from);
  });
}

template <typename T>
GMK_CPU_INLINE void backward_loop(Transform transform, bool reverse, const T* z, const T* r, const T* t, const T* g,
                                  T grad_logdet, T* grad_z, T* grad_r, T* grad_t, int64_t n, int64_t pass_from) {
  with_transform(transform, reverse, [&]<Transform kTransform, bool kReverse>() {
    backward_math<kTransform, kReverse>(z, r, t, g, grad_logdet, grad_z, grad_r, grad_t, n, pass_from);
  });
}

GMK_CPU_CLONES double forward_run(Transform transform, bool reverse, const float* z, const float* r, const float* t,
                                  float* out, float* log_s, int64_t n, int64_t pass_from) {
  return forward_loop(transform, reverse, z, r, t, out, log_s, n, pass_from);
}
double forward_run(Transform transform, bool reverse, const double* z, const double* r, const double* t,
                   double* out, double* log_s, int64_t n, int64_t pass_from) {
  return forward_loop(transform, reverse, z, r, t, out, log_s, n, pass_from);
}
GMK_CPU_CLONES void backward_run(Transform transform, bool reverse, const float* z, const float* r, const float* t,
                                 const float* g, float grad_logdet, float* grad_z, float* grad_r, float* grad_t,
                                 int64_t n, int64_t pass_from) {
  backward_loop(transform, reverse, z, r, t, g, grad_logdet, grad_z, grad_r, grad_t, n, pass_from);
}
void backward_run(Transform transform, bool reverse, const double* z, const double* r, const double* t,
                  const double* g, double grad_logdet, double* grad_z, double* grad_r, double* grad_t, int64_t n,
                  int64_t pass_from) {
  backward_loop(transform, reverse, z, r, t, g, grad_logdet, grad_z, grad_r, grad_t, n, pass_from);
}

// --- the rows ----------------------------------------------------------------------------------

template <typename scalar_t>
using logdet_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;

// Calls run(i0, n, pass_from) for the runs of a row: up to kRun elements; for a checkerboard within
// one spatial row, pass_from the run's first x_a element (see forward_math), else n.
template <typename Run>
void for_each_run(const Args& args, Run run) {
  if (!is_checkerboard(args.layout)) {
    for (int64_t i0 = 0; i0 < args.inner; i0 += kRun) {
      const int64_t n = std::min(kRun, args.inner - i0);
      run(i0, n, n);
    }
    return;
  }
  for (int64_t row = 0; row < args.inner; row += args.width) {
    for (int64_t j0 = 0; j0 < args.width; j0 += kRun) {
      const int64_t n = std::min(kRun, args.width - j0);
      run(row + j0, n, checkerboard_b(args.layout, args.width, row + j0) ? 1 : 0);
    }
  }
}

// Channel of x holding row c of x_b, and offsets (in rows of inner) of x_a's and x_b's rows in the
// contiguous output: a checkerboard channel holds both.
struct RowPlace {
  int64_t x_b_channel, out_a, out_b;
};

inline RowPlace row_place(const Args& args, int64_t o, int64_t c) {
  if (is_checkerboard(args.layout)) return {c, o * args.half + c, o * args.half + c};
  return {args.half + c, o * 2 * args.half + c, o * 2 * args.half + args.half + c};
}

template <typename scalar_t>
void forward_typed(const Args& args) {
  using opmath_t = at::opmath_type<scalar_t>;
  const bool additive = args.transform == Transform::Additive;
  auto* y = static_cast<scalar_t*>(args.out);
  std::vector<double> row_sums(additive ? 0 : args.outer * args.half);
  for_each_row(args, [&](int64_t o, int64_t c) {
    const int64_t r_c = r_channel(args.layout, args.half, c);
    const int64_t t_c = t_channel(args.transform, args.layout, args.half, c);
    const RowPlace place = row_place(args, o, c);
    scalar_t* y_b = y + place.out_b * args.inner;
    if (!is_checkerboard(args.layout)) copy_row(args.x, args.x_strides, o, c, args.inner, y + place.out_a * args.inner);
    double sum = 0.0;
    for_each_run(args, [&](int64_t i0, int64_t n, int64_t pass_from) {
      opmath_t z_buffer[kRun], r_buffer[kRun], t_buffer[kRun], out_buffer[kRun], log_s[kRun];
      const opmath_t* z = read_run<scalar_t>(args.x, args.x_strides, o, place.x_b_channel, i0, n, z_buffer);
      const opmath_t* r = additive ? nullptr : read_run<scalar_t>(args.h, args.h_strides, o, r_c, i0, n, r_buffer);
      const opmath_t* t = read_run<scalar_t>(args.h, args.h_strides, o, t_c, i0, n, t_buffer);
      opmath_t* out = write_run(y_b + i0, out_buffer);
      sum += forward_run(args.transform, args.reverse, z, r, t, out, log_s, n, pass_from);
      finish_run(out, n, y_b + i0);
    });
    if (!additive) row_sums[o * args.half + c] = sum;
  });
  auto* logdet = static_cast<logdet_t<scalar_t>*>(args.logdet);
  for (int64_t o = 0; o < args.outer; ++o) {
    double sum = 0.0;
    for (int64_t c = 0; c < (additive ? 0 : args.half); ++c) sum += row_sums[o * args.half + c];
    logdet[o] = static_cast<logdet_t<scalar_t>>(args.reverse ? -sum : sum);
  }
}

template <typename scalar_t>
void backward_typed(const Args& args) {
  using opmath_t = at::opmath_type<scalar_t>;
  const bool additive = args.transform == Transform::Additive;
  const int64_t h_channels = additive ? args.half : 2 * args.half;
  const int64_t x_channels = is_checkerboard(args.layout) ? args.half : 2 * args.half;
  const Strides3 dense{x_channels * args.inner, args.inner, 1};  // grad_y: contiguous, x's shape
  const auto* grad_logdet = static_cast<const logdet_t<scalar_t>*>(args.grad_logdet);
  auto* grad_x = static_cast<scalar_t*>(args.out);
  auto* grad_h = static_cast<scalar_t*>(args.grad_h);
  for_each_row(args, [&](int64_t o, int64_t c) {
    const int64_t r_c = r_channel(args.layout, args.half, c);
    const int64_t t_c = t_channel(args.transform, args.layout, args.half, c);
    const RowPlace place = row_place(args, o, c);
    scalar_t* grad_x_b = grad_x + place.out_b * args.inner;
    scalar_t* grad_r_row = grad_h + (o * h_channels + r_c) * args.inner;
    scalar_t* grad_t_row = grad_h + (o * h_channels + t_c) * args.inner;
    if (!is_checkerboard(args.layout)) {
      copy_row(args.grad_y, dense, o, c, args.inner, grad_x + place.out_a * args.inner);  // x_a passes through
    }
    const opmath_t gl = static_cast<opmath_t>(grad_logdet[o]);
    for_each_run(args, [&](int64_t i0, int64_t n, int64_t pass_from) {
      opmath_t z_buffer[kRun], r_buffer[kRun], t_buffer[kRun], g_buffer[kRun];
      opmath_t grad_z_buffer[kRun], grad_r_buffer[kRun], grad_t_buffer[kRun];
      const opmath_t* z = read_run<scalar_t>(args.x, args.x_strides, o, place.x_b_channel, i0, n, z_buffer);
      const opmath_t* r = additive ? nullptr : read_run<scalar_t>(args.h, args.h_strides, o, r_c, i0, n, r_buffer);
      const opmath_t* t = read_run<scalar_t>(args.h, args.h_strides, o, t_c, i0, n, t_buffer);
      const opmath_t* g = read_run<scalar_t>(args.grad_y, dense, o, place.x_b_channel, i0, n, g_buffer);
      opmath_t* grad_z = write_run(grad_x_b + i0, grad_z_buffer);
      opmath_t* grad_r = additive ? nullptr : write_run(grad_r_row + i0, grad_r_buffer);
      opmath_t* grad_t = write_run(grad_t_row + i0, grad_t_buffer);
      backward_run(args.transform, args.reverse, z, r, t, g, gl, grad_z, grad_r, grad_t, n, pass_from);
      finish_run(grad_z, n, grad_x_b + i0);
      if (!additive) finish_run(grad_r, n, grad_r_row + i0);
      finish_run(grad_t, n, grad_t_row + i0);
    });
  });
}

}  // namespace

void forward_cpu(const Args& args) {
  with_scalar_type(args.dtype, [&](auto tag) { forward_typed<decltype(tag)>(args); });
}
void backward_cpu(const Args& args) {
  with_scalar_type(args.dtype, [&](auto tag) { backward_typed<decltype(tag)>(args); });
}

}  // namespace gmk::coupling
