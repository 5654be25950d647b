// Discretized logistic mixture likelihood and sampling (PixelCNN++, Salimans et al. 2017, arXiv 1701.05517,
// section 2.1; docs/conventions.md, "Discretized logistic mixture"). Math shared by the CPU and CUDA kernels,
// templated on the compute type T (float, or double for float64 parameters) and on the elementary functions,
// `Math` (gmk::LibMath on CUDA, gmk::cpu::Math in the CPU likelihood kernels, whose float functions
// vectorise). The likelihood has no branches on the data: the CPU kernels vectorise it across positions.
//
// One position holds K components. Component k of channel c is a logistic with mean mu_ck and
// log-scale ls_ck = max(raw_ls_ck, log_scale_min), discretized to num_bins levels on [-1, 1]:
// bin centres 2i/(num_bins-1) - 1, half-width d = 1/(num_bins-1). With z± = e^-ls (x - mu ± d),
//   lowest bin  (x < -1 + d): L = log σ(z+)
//   highest bin (x >  1 - d): L = log(1 - σ(z-)) = log σ(-z-)
//   otherwise:                L = log(σ(z+) - σ(z-))       if σ(z+) - σ(z-) > 1e-5, else
//                             L = log σ(z_mid) + log σ(-z_mid) - ls - log((num_bins-1)/2)
//                                 (the density at the bin centre times the bin width),
// and log p = logsumexp_k(log_softmax(logits)_k + Σ_c L_ck).
#pragma once
#include <cmath>
#include <limits>

#include "gmk/common.h"

#if defined(GMK_WITH_CUDA)
#include <cuda_runtime_api.h>
#endif

// Fully unrolls the loops over the C <= 3 channels: on the GPU the per-channel arrays stay in
// registers; on the CPU the loops over positions around them vectorise (GCC vectorises no loop that
// holds another loop).
#if defined(__CUDA_ARCH__)
#define GMK_UNROLL _Pragma("unroll")
#elif defined(__GNUC__) && !defined(__CUDACC__)
#define GMK_UNROLL _Pragma("GCC unroll 3")
#else
#define GMK_UNROLL
#endif

namespace gmk::logistic_mixture {

GMK_HOST_DEVICE float rint_(float v) { return rintf(v); }  // to nearest, ties to even (as torch.round)
GMK_HOST_DEVICE double rint_(double v) { return rint(v); }
GMK_HOST_DEVICE float abs_(float v) { return fabsf(v); }
GMK_HOST_DEVICE double abs_(double v) { return fabs(v); }
template <typename T>
GMK_HOST_DEVICE T min_(T a, T b) {
  return b < a ? b : a;
}
template <typename T>
GMK_HOST_DEVICE T max_(T a, T b) {
  return a < b ? b : a;
}

// The bin grid of one op call.
template <typename T>
struct Bins {
  T intervals;           // num_bins - 1
  T half_width;          // d = 1 / (num_bins - 1)
  T log_half_intervals;  // log((num_bins - 1) / 2) = -log(bin width)
};

template <typename T>
GMK_HOST_DEVICE Bins<T> make_bins(int64_t num_bins) {
  const T intervals = static_cast<T>(num_bins - 1);
  return {intervals, T(1) / intervals, LibMath::log(intervals / T(2))};
}

// Below this bin probability the bin-centre density replaces log(σ(z+) - σ(z-)) (PixelCNN++).
constexpr double kMinBinMass = 1e-5;

// L_ck of one (channel, component) and, when kGrad, its derivatives d_mean = dL/dmu and
// d_log_scale = dL/d raw_ls (zero where raw_ls <= log_scale_min, as torch.clamp).
template <typename T>
struct ComponentLogProb {
  T value = 0, d_mean = 0, d_log_scale = 0;
};

// The derivatives of one formula for L = f(z+, z-): d_z = ∂f/∂z+ + ∂f/∂z- and d_log_scale = dL/dls.
// As dz±/dmu = -e^-ls and dz±/dls = -z±, dL/dmu = -e^-ls d_z and dL/dls = -(z+ ∂f/∂z+ + z- ∂f/∂z-).
template <typename T>
struct Partials {
  T d_z, d_log_scale;
};

// The mass of the bin, σ(a) - σ(b) for a = z+ > b = z-, as σ(a) σ(-b) (1 - e^-w) with
// w = a - b = 2 d e^-ls: a product of positive factors, so with no cancellation.
template <typename T>
struct BinMass {
  T a, b, w, exp_neg_a, exp_b, sig_a_sig_neg_b, neg_expm1_w;  // neg_expm1_w = 1 - e^-w

  GMK_HOST_DEVICE T value() const { return sig_a_sig_neg_b * neg_expm1_w; }

  // Of L = log(mass): ∂L/∂a = σ(-a) + 1/(e^w - 1), ∂L/∂b = -σ(b) - 1/(e^w - 1); the 1/(e^w - 1)
  // terms cancel in d_z and leave w/(e^w - 1) in dL/dls. For mass > 1e-5, which bounds e^-a, e^b
  // and 1/(1 - e^-w) by 1e5; elsewhere they may be NaN.
  GMK_HOST_DEVICE Partials<T> partials() const {
    const T sig_neg_a = exp_neg_a * (T(1) + exp_b) * sig_a_sig_neg_b;  // e^-a σ(a)
    const T sig_b = exp_b * (T(1) + exp_neg_a) * sig_a_sig_neg_b;      // e^b σ(-b)
    const T w_over_expm1_w = w * (T(1) - neg_expm1_w) / neg_expm1_w;
    return {sig_neg_a - sig_b, -(a * sig_neg_a - b * sig_b + w_over_expm1_w)};
  }
};

template <typename Math, typename T>
GMK_HOST_DEVICE BinMass<T> bin_mass(T a, T b, T w) {
  const T exp_neg_a = Math::exp(-a), exp_b = Math::exp(b);
  return {a, b, w, exp_neg_a, exp_b, T(1) / ((T(1) + exp_neg_a) * (T(1) + exp_b)), -Math::expm1(-w)};
}

// Of the formulas on log σ(t) (see component_log_prob), given e^-|t|: d/dt log σ(t) = σ(-t) in the
// edge bins (and dt/dz- = -1 in the highest), d/dt (log σ(t) + log σ(-t)) = -tanh(t/2) =
// -sign(t) (1 - e^-|t|) / (1 + e^-|t|) for the density. dL/dls = -t d/dt (t = ±z and dz/dls = -z),
// and -1 more for the density's -ls.
template <typename Math, typename T>
GMK_HOST_DEVICE Partials<T> log_sigmoid_partials(T t, T exp_neg_abs_t, bool edge, bool highest) {
  const T inv_one_plus = T(1) / (T(1) + exp_neg_abs_t);
  const T sig_neg_t = (t > T(0) ? exp_neg_abs_t : T(1)) * inv_one_plus;
  const T tanh_abs_half = -Math::expm1(-abs_(t)) * inv_one_plus;
  const T d_t = edge ? sig_neg_t : (t > T(0) ? -tanh_abs_half : tanh_abs_half);
  return {highest ? -d_t : d_t, -t * d_t - (edge ? T(0) : T(1))};
}

// Every formula is evaluated and the one that applies selected, so the others contribute nothing, not
// even a NaN (they are never multiplied by zero); every result is finite
// whenever z± are (|x - mu| e^-ls within the float range). Outside the bin mass, L is written on
// log σ(t) = min(t, 0) - log(1 + e^-|t|): in the edge bins L = log σ(t), t = z+ (lowest) or -z-
// (highest); the density is log σ(t) + log σ(-t) - ls - log((num_bins-1)/2) with t = z_mid.
template <bool kGrad, typename Math, typename T>
GMK_HOST_DEVICE ComponentLogProb<T> component_log_prob(T x, T mu, T raw_log_scale, T log_scale_min,
                                                       const Bins<T>& bins) {
  const bool clamped = raw_log_scale <= log_scale_min;  // torch.clamp passes no gradient at equality
  const T log_scale = clamped ? log_scale_min : raw_log_scale;
  const T inv_scale = Math::exp(-log_scale);
  const T centred = x - mu;
  const T z_plus = inv_scale * (centred + bins.half_width), z_minus = inv_scale * (centred - bins.half_width);
  const bool edge = abs_(x) > T(1) - bins.half_width, highest = x > T(1) - bins.half_width;
  const BinMass<T> bin = bin_mass<Math>(z_plus, z_minus, T(2) * bins.half_width * inv_scale);
  const bool in_bin = (edge ? T(0) : bin.value()) > T(kMinBinMass);  // a select: GCC 12 vectorises no && here
  const T t = edge ? (highest ? -z_minus : z_plus) : inv_scale * centred;
  const T exp_neg_abs_t = Math::exp(-abs_(t));
  // One logarithm, for the formula that applies. log(1 + e^-|t|) is within 2^-24 of log1p: an
  // absolute error, which is all that matters in a term of log p.
  const T log_v = Math::log(in_bin ? bin.value() : T(1) + exp_neg_abs_t);
  const T log_sigmoid_value =
      edge ? min_(t, T(0)) - log_v : -abs_(t) - T(2) * log_v - log_scale - bins.log_half_intervals;
  ComponentLogProb<T> out;
  out.value = in_bin ? log_v : log_sigmoid_value;
  if constexpr (kGrad) {
    const Partials<T> bin_partials = bin.partials();
    const Partials<T> other = log_sigmoid_partials<Math>(t, exp_neg_abs_t, edge, highest);
    out.d_mean = -inv_scale * (in_bin ? bin_partials.d_z : other.d_z);
    out.d_log_scale = clamped ? T(0) : (in_bin ? bin_partials.d_log_scale : other.d_log_scale);
  }
  return out;
}

// Maps a uniform draw u in [0, 1) into [1e-5, 1 - 1e-5], away from the infinite tails.
template <typename T>
GMK_HOST_DEVICE T open_uniform(T u) {
  return T(1e-5) + T(1 - 2e-5) * u;
}

// A draw from the logistic (mu, e^ls) by its inverse CDF, mu + e^ls (log u - log(1 - u)), clamped to
// [-1, 1] and rounded to the nearest bin centre 2i/(num_bins-1) - 1.
template <typename Math, typename T>
GMK_HOST_DEVICE T sample_logistic(T mu, T log_scale, T uniform, const Bins<T>& bins) {
  const T u = open_uniform(uniform);
  const T v = min_(max_(mu + Math::exp(log_scale) * (Math::log(u) - Math::log1p(-u)), T(-1)), T(1));
  const T bin = rint_((v + T(1)) * bins.intervals / T(2));
  return T(2) * bin / bins.intervals - T(1);
}

// The normaliser of log_softmax over the logits, kept as their maximum and log Σ e^(logit - max), so that
// log_softmax(logit) = (logit - max) - log_sum as torch's: folding the two into one number (max + log_sum)
// loses log_sum's digits to the rounding of a large max (a pair of logits of 3e38 would weigh 1 each).
template <typename T>
struct Normaliser {
  T max, log_sum;

  GMK_HOST_DEVICE T log_softmax(T logit) const { return (logit - max) - log_sum; }
};

// log Σ exp(v_i), one term at a time (online: a running maximum and the sum scaled by it); one
// exponential per term, e^-|v - max|, which scales the new term or the old sum. A term equal to the
// maximum counts 1, also when both are -inf (a component of probability 0, whose -inf - -inf would
// make the sum NaN) or +inf; a NaN term makes the sum NaN.
template <typename Math, typename T>
struct LogSumExp {
  T max = -std::numeric_limits<T>::infinity();
  T sum = 0;

  GMK_HOST_DEVICE void add(T v) {
    const T scale = Math::exp(-abs_(v == max ? T(0) : v - max));
    sum = v > max ? sum * scale + T(1) : sum + scale;
    max = max_(max, v);
  }
  GMK_HOST_DEVICE T value() const { return max + Math::log(sum); }
  GMK_HOST_DEVICE Normaliser<T> normaliser() const { return {max, Math::log(sum)}; }
};

// Parameter indices of one position in the PixelCNN++ layout (docs/conventions.md,
// "Parameter layout"): K logits, then for each channel c a block of K means, K log-scales and
// K coefficients (C = 1: no coefficients).
struct Layout {
  int64_t mixtures;  // K

  GMK_HOST_DEVICE int64_t logit(int64_t k) const { return k; }
  GMK_HOST_DEVICE int64_t mean(int c, int64_t k) const { return (1 + 3 * c) * mixtures + k; }
  GMK_HOST_DEVICE int64_t log_scale(int c, int64_t k) const { return mean(c, k) + mixtures; }
  GMK_HOST_DEVICE int64_t coef(int c, int64_t k) const { return mean(c, k) + 2 * mixtures; }
};

// The constants of one op call.
template <typename T>
struct Model {
  Layout layout;
  Bins<T> bins;
  T log_scale_min;
};

// The per-position code below reads and writes through `at`, a view of one position (n, s):
// at.param(j) -> T, at.x(c), at.grad_nll(), at.gumbel_u(k), at.logistic_u(c), and
// at.set_nll(v), at.set_grad(j, v), at.set_sample(c, v). The CPU likelihood kernels run the steps
// (mixture_term, set_component_grads) over runs of positions instead.

// mu_c of a component: its mean plus the coupling with the sub-pixels before c (PixelCNN++):
// mu_0 = mean_0, mu_1 = mean_1 + coef_0 x_0, mu_2 = mean_2 + coef_1 x_0 + coef_2 x_1.
template <typename T>
GMK_HOST_DEVICE T coupled_mean(int c, T mean, const T (&coef)[3], const T (&x)[3]) {
  if (c == 1) return mean + coef[0] * x[0];
  if (c == 2) return mean + coef[1] * x[0] + coef[2] * x[1];
  return mean;
}

// tanh(v), and its derivative 1 - tanh(v)^2 in `derivative`. For |v| >= 0.55 both come from
// s = σ(-2|v|) = 1 / (1 + e^2|v|) < 1/4: tanh|v| = 1 - 2s, 1 - tanh^2 = 4s (1 - s), with no
// cancellation where tanh is near ±1 (within 1.6 ulp on the CPU); below, Math::tanh and 1 - tanh^2.
template <typename Math, typename T>
GMK_HOST_DEVICE T tanh_with_derivative(T v, T& derivative) {
  const T s = T(1) / (T(1) + Math::exp(T(2) * abs_(v)));
  const T near_zero = Math::tanh(v), outer = T(1) - T(2) * s;
  const bool small = abs_(v) < T(0.55);
  derivative = small ? T(1) - near_zero * near_zero : T(4) * s * (T(1) - s);
  return small ? near_zero : (v < T(0) ? -outer : outer);
}

// coef[c] = tanh(raw coefficient of channel block c) of component k and its derivative in
// coef_derivative[c] (C = 3 only).
template <int kChannels, typename Math, typename T, typename Position>
GMK_HOST_DEVICE void load_coefs(const Position& at, const Layout& layout, int64_t k, T (&coef)[3],
                                T (&coef_derivative)[3]) {
  if constexpr (kChannels == 3) {
    GMK_UNROLL
    for (int c = 0; c < 3; ++c) coef[c] = tanh_with_derivative<Math>(at.param(layout.coef(c, k)), coef_derivative[c]);
  }
}

// The k-th term of log p = logsumexp_k(...): log_softmax(logits)_k + Σ_c L_ck at sub-pixels x, given
// the normaliser of the logits; each channel's terms in `channel`, the derivatives of tanh(coefs) in
// `coef_derivative`.
template <bool kGrad, int kChannels, typename Math, typename T, typename Position>
GMK_HOST_DEVICE T mixture_term(const Position& at, const Model<T>& model, int64_t k, const T (&x)[3],
                               const Normaliser<T>& log_norm,
                               T (&coef_derivative)[3], ComponentLogProb<T> (&channel)[kChannels]) {
  T coef[3] = {};
  load_coefs<kChannels, Math>(at, model.layout, k, coef, coef_derivative);
  T sum = 0;
  GMK_UNROLL
  for (int c = 0; c < kChannels; ++c) {
    const T mu = coupled_mean(c, at.param(model.layout.mean(c, k)), coef, x);
    channel[c] = component_log_prob<kGrad, Math>(x[c], mu, at.param(model.layout.log_scale(c, k)),
                                                 model.log_scale_min, model.bins);
    sum += channel[c].value;
  }
  return log_norm.log_softmax(at.param(model.layout.logit(k))) + sum;
}

// Gradient of nll = -log p with respect to the parameters of component k, from its term's tanh'(coefs)
// and channels (mixture_term<true>), its weight softmax(logits)_k and its responsibility
// r_k = exp(term_k - log p):
//   dnll/dlogit_k = softmax(logits)_k - r_k,   dnll/dθ_ck = -r_k dL_ck/dθ_ck,
// and through the coupling, with coef_j = tanh(raw_j):
//   dnll/draw_0 = -r dL_1/dmu_1 x_0 tanh'(raw_0), dnll/draw_1 = -r dL_2/dmu_2 x_0 tanh'(raw_1),
//   dnll/draw_2 = -r dL_2/dmu_2 x_1 tanh'(raw_2). Each times grad_nll.
// A clamped log-scale (raw <= log_scale_min) gets exactly 0, selected, not 0 · grad_l: also where the
// responsibility is NaN (every component of probability 0), as torch.where gives the reference's.
template <int kChannels, typename T, typename Position>
GMK_HOST_DEVICE void set_component_grads(const Position& at, const Model<T>& model, int64_t k, const T (&x)[3],
                                         const T (&coef_derivative)[3],
                                         const ComponentLogProb<T> (&channel)[kChannels], T weight, T r,
                                         T grad_nll) {
  const Layout& layout = model.layout;
  const T grad_l = -grad_nll * r;  // dnll/dL_ck, the same for every channel c
  at.set_grad(layout.logit(k), grad_nll * (weight - r));
  GMK_UNROLL
  for (int c = 0; c < kChannels; ++c) {
    at.set_grad(layout.mean(c, k), grad_l * channel[c].d_mean);
    const bool clamped = at.param(layout.log_scale(c, k)) <= model.log_scale_min;
    at.set_grad(layout.log_scale(c, k), clamped ? T(0) : grad_l * channel[c].d_log_scale);
  }
  if constexpr (kChannels == 3) {
    at.set_grad(layout.coef(0, k), grad_l * channel[1].d_mean * x[0] * coef_derivative[0]);
    at.set_grad(layout.coef(1, k), grad_l * channel[2].d_mean * x[0] * coef_derivative[1]);
    at.set_grad(layout.coef(2, k), grad_l * channel[2].d_mean * x[1] * coef_derivative[2]);
  }
}

// log Σ_k exp(logits_k), the normaliser of log_softmax.
template <typename Math, typename T, typename Position>
GMK_HOST_DEVICE Normaliser<T> logit_normaliser(const Position& at, const Layout& layout) {
  LogSumExp<Math, T> lse;
  for (int64_t k = 0; k < layout.mixtures; ++k) lse.add(at.param(layout.logit(k)));
  return lse.normaliser();
}

template <int kChannels, typename T, typename Position>
GMK_HOST_DEVICE void load_x(const Position& at, T (&x)[3]) {
  GMK_UNROLL
  for (int c = 0; c < kChannels; ++c) x[c] = at.x(c);
}

// log p = logsumexp_k(log_softmax(logits)_k + Σ_c L_ck), given the normaliser of the logits, as the
// normaliser of the terms: log p = max + log_sum, and the responsibilities r_k = e^(term_k - max) / Σ are
// its log_softmax, which sum to 1 also where max + log_sum rounds (terms of 1e7 in float32: two equal
// components then weigh 1/2 each, where e^(term_k - log p) would give e^-1).
template <int kChannels, typename Math, typename T, typename Position>
GMK_HOST_DEVICE Normaliser<T> mixture_normaliser(const Position& at, const Model<T>& model, const T (&x)[3],
                                                 const Normaliser<T>& log_norm) {
  LogSumExp<Math, T> mixture;
  for (int64_t k = 0; k < model.layout.mixtures; ++k) {
    T coef_derivative[3] = {};
    ComponentLogProb<T> channel[kChannels];
    mixture.add(mixture_term<false, kChannels, Math>(at, model, k, x, log_norm, coef_derivative, channel));
  }
  return mixture.normaliser();
}

template <int kChannels, typename Math, typename T, typename Position>
GMK_HOST_DEVICE T log_prob(const Position& at, const Model<T>& model, const T (&x)[3],
                           const Normaliser<T>& log_norm) {
  const Normaliser<T> joint = mixture_normaliser<kChannels, Math>(at, model, x, log_norm);
  return joint.max + joint.log_sum;
}

template <int kChannels, typename Math, typename T, typename Position>
GMK_HOST_DEVICE void nll_forward(const Position& at, const Model<T>& model) {
  T x[3] = {};
  load_x<kChannels>(at, x);
  at.set_nll(-log_prob<kChannels, Math>(at, model, x, logit_normaliser<Math, T>(at, model.layout)));
}

// The gradient of nll: log p first (pass 1), then each component's term again, and its gradient (pass 2).
template <int kChannels, typename Math, typename T, typename Position>
GMK_HOST_DEVICE void nll_backward(const Position& at, const Model<T>& model) {
  const Layout& layout = model.layout;
  T x[3] = {};
  load_x<kChannels>(at, x);
  const Normaliser<T> log_norm = logit_normaliser<Math, T>(at, layout);
  const Normaliser<T> joint = mixture_normaliser<kChannels, Math>(at, model, x, log_norm);
  const T grad_nll = at.grad_nll();
  for (int64_t k = 0; k < layout.mixtures; ++k) {
    T coef_derivative[3] = {};
    ComponentLogProb<T> channel[kChannels];
    const T term = mixture_term<true, kChannels, Math>(at, model, k, x, log_norm, coef_derivative, channel);
    const T weight = Math::exp(log_norm.log_softmax(at.param(layout.logit(k))));
    set_component_grads<kChannels>(at, model, k, x, coef_derivative, channel, weight,
                                   Math::exp(joint.log_softmax(term)), grad_nll);
  }
}

// A component by Gumbel-max, k* = argmax_k(logits_k - log(-log g_k)) (the first on ties, as
// torch.argmax), then the sub-pixels in order, each coupled to the sampled ones before it. A NaN
// logit makes the position's sub-pixels NaN (`poison` is added to the first mean; the others couple to it).
template <int kChannels, typename Math, typename T, typename Position>
GMK_HOST_DEVICE void sample(const Position& at, const Model<T>& model) {
  const Layout& layout = model.layout;
  int64_t chosen = 0;
  T best = -std::numeric_limits<T>::infinity(), poison = 0;
  for (int64_t k = 0; k < layout.mixtures; ++k) {
    const T score = at.param(layout.logit(k)) - Math::log(-Math::log(open_uniform(at.gumbel_u(k))));
    if (score > best) {
      best = score;
      chosen = k;
    }
    poison = score != score ? score : poison;
  }
  T coef[3] = {}, coef_derivative[3] = {}, x[3] = {};
  load_coefs<kChannels, Math>(at, layout, chosen, coef, coef_derivative);
  for (int c = 0; c < kChannels; ++c) {
    const T mu = coupled_mean(c, at.param(layout.mean(c, chosen)), coef, x) + (c == 0 ? poison : T(0));
    const T log_scale = max_(at.param(layout.log_scale(c, chosen)), model.log_scale_min);
    x[c] = sample_logistic<Math>(mu, log_scale, at.logistic_u(c), model.bins);
    at.set_sample(c, x[c]);
  }
}

// The kernels' arguments, their entry points (called by logistic_mixture_ops.cpp), and the view of one
// position through which the CUDA kernels (and CPU sampling) run the per-position code above. (The CPU
// likelihood runs the same steps over runs of positions.)

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

// Position (n, s) of the op's tensors, for the algorithms above: parameters
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
