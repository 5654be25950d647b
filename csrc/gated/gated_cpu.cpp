#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include "gated/gated.h"

namespace gmk::gated {
namespace {

// Rows are (o, c) pairs, each `inner` long; at least this many elements go to one task.
constexpr int64_t kGrainElements = 1 << 15;

template <typename scalar_t, typename Body>
void for_each_row(const Args& args, Body body) {
  const int64_t rows = args.outer * args.half;
  const int64_t grain = std::max<int64_t>(1, kGrainElements / std::max<int64_t>(1, args.inner));
  at::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) body(row / args.half, row % args.half);
  });
}

// Loads a and b (the two halves of x + cond) at (o, c, i) in the op's math type.
template <typename scalar_t>
struct HalvesReader {
  using opmath_t = at::opmath_type<scalar_t>;
  const Args& args;

  opmath_t load(const void* base, const Strides3& s, int64_t o, int64_t c, int64_t i) const {
    return static_cast<opmath_t>(static_cast<const scalar_t*>(base)[o * s.outer + c * s.channel + i * s.inner]);
  }
  void read(int64_t o, int64_t c, int64_t i, opmath_t& a, opmath_t& b) const {
    a = load(args.x, args.x_strides, o, c, i);
    b = load(args.x, args.x_strides, o, c + args.half, i);
    if (args.cond) {
      a += load(args.cond, args.cond_strides, o, c, i);
      b += load(args.cond, args.cond_strides, o, c + args.half, i);
    }
  }
};

template <typename scalar_t, bool kTanh>
void forward_typed(const Args& args) {
  const HalvesReader<scalar_t> reader{args};
  auto* y = static_cast<scalar_t*>(args.out);
  for_each_row<scalar_t>(args, [&](int64_t o, int64_t c) {
    scalar_t* y_row = y + (o * args.half + c) * args.inner;
    for (int64_t i = 0; i < args.inner; ++i) {
      at::opmath_type<scalar_t> a, b;
      reader.read(o, c, i, a, b);
      y_row[i] = static_cast<scalar_t>(forward<kTanh>(a, b));
    }
  });
}

template <typename scalar_t, bool kTanh>
void backward_typed(const Args& args) {
  using opmath_t = at::opmath_type<scalar_t>;
  const HalvesReader<scalar_t> reader{args};
  const auto* grad_y = static_cast<const scalar_t*>(args.grad_y);
  auto* grad_h = static_cast<scalar_t*>(args.out);
  const int64_t half_stride = args.half * args.inner;
  for_each_row<scalar_t>(args, [&](int64_t o, int64_t c) {
    const scalar_t* gy_row = grad_y + (o * args.half + c) * args.inner;
    scalar_t* ga_row = grad_h + (o * 2 * args.half + c) * args.inner;
    scalar_t* gb_row = ga_row + half_stride;
    for (int64_t i = 0; i < args.inner; ++i) {
      opmath_t a, b, ga, gb;
      reader.read(o, c, i, a, b);
      backward<kTanh>(a, b, static_cast<opmath_t>(gy_row[i]), ga, gb);
      ga_row[i] = static_cast<scalar_t>(ga);
      gb_row[i] = static_cast<scalar_t>(gb);
    }
  });
}

template <template <typename, bool> class Kernel>
void dispatch(const Args& args) {
  auto run = [&](auto tag) {
    using scalar_t = decltype(tag);
    if (args.tanh) {
      Kernel<scalar_t, true>::run(args);
    } else {
      Kernel<scalar_t, false>::run(args);
    }
  };
  switch (args.dtype) {
    case DType::Float32: return run(float{});
    case DType::Float64: return run(double{});
    case DType::Float16: return run(c10::Half{});
    case DType::BFloat16: return run(c10::BFloat16{});
  }
}

template <typename scalar_t, bool kTanh>
struct Forward {
  static void run(const Args& args) { forward_typed<scalar_t, kTanh>(args); }
};
template <typename scalar_t, bool kTanh>
struct Backward {
  static void run(const Args& args) { backward_typed<scalar_t, kTanh>(args); }
};

}  // namespace

void forward_cpu(const Args& args) { dispatch<Forward>(args); }
void backward_cpu(const Args& args) { dispatch<Backward>(args); }

}  // namespace gmk::gated
