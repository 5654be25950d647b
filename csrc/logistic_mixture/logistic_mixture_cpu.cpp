// CPU kernels of the discretized logistic mixture. The likelihood cuts each batch row's positions into
// runs of up to kRun: a run's parameters, x and grad_nll are gathered into buffers in the compute type
// (a copy when the positions are contiguous), and the per-position steps of gmk/logistic_mixture.h that
// the CUDA threads run go as loops over the run's positions, one component at a time, which the
// compiler vectorises (gmk/cpu_math.h). The gradient goes to a buffer converted into the output.
// Sampling runs per position.
#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <vector>

#include "gmk/cpu_math.h"
#include "gmk/logistic_mixture.h"

namespace gmk::logistic_mixture {
namespace {

constexpr int64_t kRun = 64;
// At least this many parameters' worth of work goes to one parallel task.
constexpr int64_t kGrainParams = 1 << 14;

// Position j of a run, for the per-position steps: the run's parameters and gradient are held as
// rows of kRun, parameter i of position j at [i * kRun + j].
template <typename T>
struct RunPosition {
  const T* params;
  T* grad;
  int64_t j;

  GMK_CPU_INLINE T param(int64_t i) const { return params[i * kRun + j]; }
  GMK_CPU_INLINE T kept(int64_t i) const { return grad[i * kRun + j]; }
  GMK_CPU_INLINE void set_grad(int64_t i, T v) const { grad[i * kRun + j] = v; }
};

// The inputs of a run of `length` positions in the compute type: params (P, kRun), x (3, kRun),
// grad_nll (kRun).
template <typename T>
struct RunInputs {
  const T* params;
  const T* x;
  const T* grad_nll;
  int64_t length;
};

template <int kChannels, typename T>
GMK_CPU_INLINE void load_x(const RunInputs<T>& in, int64_t j, T (&x)[3]) {
  GMK_UNROLL
  for (int c = 0; c < kChannels; ++c) x[c] = in.x[c * kRun + j];
}

// The gradient takes two passes over the components: the first keeps each component's term, tanh'(coefs)
// and channel derivatives in the gradient buffer, each in the slot of the parameter it belongs to (the
// term in the logit's); the second, once log p is known, reads them back and overwrites them with the
// gradient. (The CUDA kernel, which has no such buffer, computes the term again.)
template <int kChannels, typename T>
GMK_CPU_INLINE void keep_term(const RunPosition<T>& at, const Layout& layout, int64_t k, T term,
                              const T (&coef_derivative)[3], const ComponentLogProb<T> (&channel)[kChannels]) {
  at.set_grad(layout.logit(k), term);
  GMK_UNROLL
  for (int c = 0; c < kChannels; ++c) {
    at.set_grad(layout.mean(c, k), channel[c].d_mean);
    at.set_grad(layout.log_scale(c, k), channel[c].d_log_scale);
    if constexpr (kChannels == 3) at.set_grad(layout.coef(c, k), coef_derivative[c]);
  }
}

template <int kChannels, typename T>
GMK_CPU_INLINE T kept_term(const RunPosition<T>& at, const Layout& layout, int64_t k, T (&coef_derivative)[3],
                           ComponentLogProb<T> (&channel)[kChannels]) {
  GMK_UNROLL
  for (int c = 0; c < kChannels; ++c) {
    channel[c].d_mean = at.kept(layout.mean(c, k));
    channel[c].d_log_scale = at.kept(layout.log_scale(c, k));
    if constexpr (kChannels == 3) coef_derivative[c] = at.kept(layout.coef(c, k));
  }
  return at.kept(layout.logit(k));
}

// log Σ_k exp(logits_k) of each position.
template <typename T>
GMK_CPU_INLINE void log_norms(const Model<T>& model, const RunInputs<T>& in, Normaliser<T>* log_norm) {
  LogSumExp<cpu::Math, T> lse[kRun];
  for (int64_t k = 0; k < model.layout.mixtures; ++k) {
    for (int64_t j = 0; j < in.length; ++j) lse[j].add(in.params[model.layout.logit(k) * kRun + j]);
  }
  for (int64_t j = 0; j < in.length; ++j) log_norm[j] = lse[j].normaliser();
}

// The normaliser of each position's terms (log p = max + log_sum; mixture_normaliser); with kGrad, also
// the first pass of the gradient (keep_term).
//
// Position j reads and writes only its own column of the buffers: there is no dependence between the
// iterations of the loops over j, which GCC cannot prove for the many rows written without more
// run-time alias checks than it makes (hence ivdep).
template <bool kGrad, int kChannels, typename T>
GMK_CPU_INLINE void log_probs(const Model<T>& model, const RunInputs<T>& in, const Normaliser<T>* log_norm,
                              Normaliser<T>* joint, T* grad) {
  LogSumExp<cpu::Math, T> lse[kRun];
  for (int64_t k = 0; k < model.layout.mixtures; ++k) {
#pragma GCC ivdep
    for (int64_t j = 0; j < in.length; ++j) {
      const RunPosition<T> at{in.params, grad, j};
      T x[3] = {}, coef_derivative[3] = {};
      ComponentLogProb<T> channel[kChannels];
      load_x<kChannels>(in, j, x);
      const T term =
          mixture_term<kGrad, kChannels, cpu::Math>(at, model, k, x, log_norm[j], coef_derivative, channel);
      if constexpr (kGrad) keep_term(at, model.layout, k, term, coef_derivative, channel);
      lse[j].add(term);
    }
  }
  for (int64_t j = 0; j < in.length; ++j) joint[j] = lse[j].normaliser();
}

template <int kChannels, typename T>
GMK_CPU_INLINE void nll_math(const Model<T>& model, const RunInputs<T>& in, T* nll) {
  Normaliser<T> log_norm[kRun], joint[kRun];
  log_norms(model, in, log_norm);
  log_probs<false, kChannels>(model, in, log_norm, joint, static_cast<T*>(nullptr));
  for (int64_t j = 0; j < in.length; ++j) nll[j] = -(joint[j].max + joint[j].log_sum);
}

template <int kChannels, typename T>
GMK_CPU_INLINE void grad_math(const Model<T>& model, const RunInputs<T>& in, T* grad) {
  const Layout& layout = model.layout;
  Normaliser<T> log_norm[kRun], joint[kRun];
  log_norms(model, in, log_norm);
  log_probs<true, kChannels>(model, in, log_norm, joint, grad);
  for (int64_t k = 0; k < layout.mixtures; ++k) {
#pragma GCC ivdep
    for (int64_t j = 0; j < in.length; ++j) {
      const RunPosition<T> at{in.params, grad, j};
      T x[3] = {}, coef_derivative[3] = {};
      ComponentLogProb<T> channel[kChannels];
      load_x<kChannels>(in, j, x);
      const T term = kept_term(at, layout, k, coef_derivative, channel);
      const T weight = cpu::Math::exp(log_norm[j].log_softmax(at.param(layout.logit(k))));
      set_component_grads<kChannels>(at, model, k, x, coef_derivative, channel, weight,
                                     cpu::Math::exp(joint[j].log_softmax(term)), in.grad_nll[j]);
    }
  }
}

// The runs' math, compiled once per instruction set for float (see GMK_CPU_CLONES). The model and
// the inputs are taken by value: local copies, which the stores to the buffers cannot change.
template <typename T>
GMK_CPU_INLINE void nll_loops(Model<T> model, int64_t channels, RunInputs<T> in, T* nll) {
  channels == 3 ? nll_math<3>(model, in, nll) : nll_math<1>(model, in, nll);
}
template <typename T>
GMK_CPU_INLINE void grad_loops(Model<T> model, int64_t channels, RunInputs<T> in, T* grad) {
  channels == 3 ? grad_math<3>(model, in, grad) : grad_math<1>(model, in, grad);
}

GMK_CPU_CLONES void nll_run(Model<float> model, int64_t channels, RunInputs<float> in, float* nll) {
  nll_loops(model, channels, in, nll);
}
void nll_run(Model<double> model, int64_t channels, RunInputs<double> in, double* nll) {
  nll_loops(model, channels, in, nll);
}
GMK_CPU_CLONES void grad_run(Model<float> model, int64_t channels, RunInputs<float> in, float* grad) {
  grad_loops(model, channels, in, grad);
}
void grad_run(Model<double> model, int64_t channels, RunInputs<double> in, double* grad) {
  grad_loops(model, channels, in, grad);
}

// out[c * kRun + j] = base[n, c, s0 + j] for c < rows, j < length, in the compute type.
template <typename V, typename T>
void gather(const void* base, const Strides3& strides, int64_t n, int64_t s0, int64_t rows, int64_t length, T* out) {
  const V* p = static_cast<const V*>(base) + n * strides.outer + s0 * strides.inner;
  for (int64_t c = 0; c < rows; ++c) {
    const V* row = p + c * strides.channel;
    if (strides.inner == 1) {
      for (int64_t j = 0; j < length; ++j) out[c * kRun + j] = static_cast<T>(row[j]);
    } else {
      for (int64_t j = 0; j < length; ++j) out[c * kRun + j] = static_cast<T>(row[j * strides.inner]);
    }
  }
}

// base[n, c, s0 + j] = in[c * kRun + j] of a contiguous (batch, rows, positions) output.
template <typename V, typename T>
void scatter(const T* in, int64_t rows, int64_t length, const Args& args, int64_t n, int64_t s0, void* base) {
  V* p = static_cast<V*>(base) + n * rows * args.positions + s0;
  for (int64_t c = 0; c < rows; ++c) {
    for (int64_t j = 0; j < length; ++j) p[c * args.positions + j] = static_cast<V>(in[c * kRun + j]);
  }
}

// Runs the likelihood (kBackward: its gradient) over every run, in parallel.
template <bool kBackward, typename Param, typename T>
void run_likelihood(const Args& args) {
  const Model<T> model = make_model<T>(args);
  const int64_t num_params = params_per_position(args.channels, args.mixtures);
  const int64_t runs_per_row = (args.positions + kRun - 1) / kRun;
  const int64_t grain = std::max<int64_t>(1, kGrainParams / (num_params * std::min(kRun, args.positions)));
  at::parallel_for(0, args.batch * runs_per_row, grain, [&](int64_t begin, int64_t end) {
    std::vector<T> params(num_params * kRun), out((kBackward ? num_params : 1) * kRun);
    T x[3 * kRun], grad_nll[kRun];
    for (int64_t run = begin; run < end; ++run) {
      const int64_t n = run / runs_per_row, s0 = (run % runs_per_row) * kRun;
      const int64_t length = std::min(kRun, args.positions - s0);
      gather<Param>(args.params, args.params_strides, n, s0, num_params, length, params.data());
      gather<T>(args.x, args.x_strides, n, s0, args.channels, length, x);
      if constexpr (kBackward) {
        gather<T>(args.grad_nll, args.grad_nll_strides, n, s0, 1, length, grad_nll);
        grad_run(model, args.channels, RunInputs<T>{params.data(), x, grad_nll, length}, out.data());
        scatter<Param>(out.data(), num_params, length, args, n, s0, args.out);
      } else {
        nll_run(model, args.channels, RunInputs<T>{params.data(), x, grad_nll, length}, out.data());
        scatter<T>(out.data(), 1, length, args, n, s0, args.out);
      }
    }
  });
}

template <int kChannels, typename Param, typename T>
void run_sample(const Args& args) {
  const int64_t grain = std::max<int64_t>(1, kGrainParams / params_per_position(args.channels, args.mixtures));
  at::parallel_for(0, args.batch * args.positions, grain, [&](int64_t begin, int64_t end) {
    for (int64_t position = begin; position < end; ++position) {
      run_position<Op::Sample, kChannels, Param, T>(args, position);
    }
  });
}

// Parameters in their own type, the math in float (float16, bfloat16, float32) or double (float64).
template <typename Fn>
void with_types(DType dtype, Fn fn) {
  switch (dtype) {
    case DType::Float32: return fn(float{}, float{});
    case DType::Float64: return fn(double{}, double{});
    case DType::Float16: return fn(c10::Half{}, float{});
    case DType::BFloat16: return fn(c10::BFloat16{}, float{});
  }
}

}  // namespace

void nll_cpu(const Args& args) {
  with_types(args.dtype, [&](auto param, auto compute) {
    run_likelihood<false, decltype(param), decltype(compute)>(args);
  });
}
void nll_backward_cpu(const Args& args) {
  with_types(args.dtype, [&](auto param, auto compute) {
    run_likelihood<true, decltype(param), decltype(compute)>(args);
  });
}
void sample_cpu(const Args& args) {
  with_types(args.dtype, [&](auto param, auto compute) {
    using Param = decltype(param);
    using T = decltype(compute);
    args.channels == 3 ? run_sample<3, Param, T>(args) : run_sample<1, Param, T>(args);
  });
}

}  // namespace gmk::logistic_mixture
