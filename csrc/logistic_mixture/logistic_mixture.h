// Entry points of the discretized logistic mixture kernels, called by logistic_mixture_ops.cpp, and
// the view of one position through which the CUDA kernels (and CPU sampling) run the per-position code
// of gmk/logistic_mixture.h. (The CPU likelihood runs the same steps over runs of positions.)
#pragma once
#include "gmk/logistic_mixture.h"

#if defined(GMK_WITH_CUDA)
#include <cuda_runtime_api.h>
#endif

namespace gmk::logistic_mixture {

// params (batch, P, positions), P = 10K (C = 3) or 3K (C = 1), any strides, in `dtype`. Everything
// else is float64 when dtype is Float64 and float32 otherwise: x (batch, C, positions) and the
// noise gumbel_u (batch, K, positions), logistic_u (batch, C, positions) with any strides, grad_nll
// (batch, positions) with any strides (seen as (batch, 1, positions)). `out` is contiguous: nll
// (batch, positions), grad_params (batch, P, positions) in `dtype`, or samples (batch, C, positions).
struct Args {
  int64_t batch = 0, channels = 0, mixtures = 0, positions = 0;
  int64_t num_bins = 256;
  double log_scale_min = -7.0;
  const void* params = nullptr;
  Strides3 params_strides;
  const void* x = nullptr;
  Strides3 x_strides;
  const void* grad_nll = nullptr;
  Strides3 grad_nll_strides;
  const void* gumbel_u = nullptr;
  Strides3 gumbel_u_strides;
  const void* logistic_u = nullptr;
  Strides3 logistic_u_strides;
  void* out = nullptr;
  DType dtype = DType::Float32;
};

GMK_HOST_DEVICE int64_t params_per_position(int64_t channels, int64_t mixtures) {
  return (channels == 3 ? 10 : 3) * mixtures;
}

template <typename T>
GMK_HOST_DEVICE Model<T> make_model(const Args& args) {
  return {Layout{args.mixtures}, make_bins<T>(args.num_bins), static_cast<T>(args.log_scale_min)};
}

// Position (n, s) of the op's tensors, for the algorithms of gmk/logistic_mixture.h: parameters
// stored as Param, everything else as the compute type T. Offsets are 64-bit.
template <typename Param, typename T>
struct Position {
  const Args& args;
  int64_t n, s;

  template <typename V>
  GMK_HOST_DEVICE V load(const void* base, const Strides3& strides, int64_t channel) const {
    return static_cast<const V*>(base)[n * strides.outer + channel * strides.channel + s * strides.inner];
  }
  // Element (n, channel, s) of a contiguous (batch, channels, positions) output.
  template <typename V>
  GMK_HOST_DEVICE void store(int64_t channels, int64_t channel, V v) const {
    static_cast<V*>(args.out)[(n * channels + channel) * args.positions + s] = v;
  }

  GMK_HOST_DEVICE T param(int64_t j) const {
    return static_cast<T>(load<Param>(args.params, args.params_strides, j));
  }
  GMK_HOST_DEVICE T x(int c) const { return load<T>(args.x, args.x_strides, c); }
  GMK_HOST_DEVICE T grad_nll() const { return load<T>(args.grad_nll, args.grad_nll_strides, 0); }
  GMK_HOST_DEVICE T gumbel_u(int64_t k) const { return load<T>(args.gumbel_u, args.gumbel_u_strides, k); }
  GMK_HOST_DEVICE T logistic_u(int c) const { return load<T>(args.logistic_u, args.logistic_u_strides, c); }

  GMK_HOST_DEVICE void set_nll(T v) const { store<T>(1, 0, v); }
  GMK_HOST_DEVICE void set_grad(int64_t j, T v) const {
    store<Param>(params_per_position(args.channels, args.mixtures), j, static_cast<Param>(v));
  }
  GMK_HOST_DEVICE void set_sample(int c, T v) const { store<T>(args.channels, c, v); }
};

enum class Op { Forward, Backward, Sample };

// The work of one position: what a CUDA thread does (and the CPU's sampling loop), on libm's or
// CUDA's elementary functions.
template <Op kOp, int kChannels, typename Param, typename T>
GMK_HOST_DEVICE void run_position(const Args& args, int64_t position) {
  const Position<Param, T> at{args, position / args.positions, position % args.positions};
  const Model<T> model = make_model<T>(args);
  if constexpr (kOp == Op::Forward) nll_forward<kChannels, LibMath>(at, model);
  if constexpr (kOp == Op::Backward) nll_backward<kChannels, LibMath>(at, model);
  if constexpr (kOp == Op::Sample) sample<kChannels, LibMath>(at, model);
}

void nll_cpu(const Args& args);
void nll_backward_cpu(const Args& args);
void sample_cpu(const Args& args);

#if defined(GMK_WITH_CUDA)
cudaError_t nll_cuda(const Args& args, cudaStream_t stream);
cudaError_t nll_backward_cuda(const Args& args, cudaStream_t stream);
cudaError_t sample_cuda(const Args& args, cudaStream_t stream);
#endif

}  // namespace gmk::logistic_mixture
