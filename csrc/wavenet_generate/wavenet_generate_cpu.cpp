// CPU kernel of WaveNet generation: each batch element runs the whole sequence on one thread
// (elements in parallel), one step at a time, with the per-layer ring buffers of gmk/wavenet_generate.h.
// Weights arrive input-major in the compute type (float, or double for float64), so every 1x1 and
// every tap of the dilated convolution is a run of y[0..cout) += x[i] · w[i, 0..cout), which the
// compiler vectorises (compiled per instruction set: GMK_CPU_CLONES).
#include <ATen/Parallel.h>

#include <algorithm>
#include <vector>

#include "gmk/cpu_math.h"
#include "gmk/gated.h"
#include "wavenet_generate/wavenet_generate.h"

namespace gmk::wavenet_generate {
namespace {

// y[o] += Σ_i x[i] · w[i·cout + o], o < cout.
template <typename T>
GMK_CPU_INLINE void matvec_add(const T* x, int64_t cin, const T* w, int64_t cout, T* y) {
  for (int64_t i = 0; i < cin; ++i) {
    const T xi = x[i];
    const T* row = w + i * cout;
    for (int64_t o = 0; o < cout; ++o) y[o] += xi * row[o];
  }
}

// The inverse CDF of softmax(logits / temperature) at u, summed in order as the reference's cumsum:
// the number of classes whose cumulative sum is <= u · total, at most count - 1. e is scratch.
template <typename T>
GMK_CPU_INLINE int64_t categorical(const T* logits, int64_t count, T temperature, T u, T* e) {
  T top = logits[0];
  for (int64_t c = 1; c < count; ++c) top = std::max(top, logits[c]);
  for (int64_t c = 0; c < count; ++c) e[c] = cpu::Math::exp((logits[c] - top) / temperature);
  T total = 0;
  for (int64_t c = 0; c < count; ++c) total += e[c];
  const T target = u * total;
  T cumulative = 0;
  int64_t below = 0;
  for (int64_t c = 0; c < count; ++c) {
    cumulative += e[c];
    below += cumulative <= target;
  }
  return std::min(below, count - 1);
}

template <typename T>
struct Workspace {
  std::vector<T> buffer;
  T *x, *h, *z, *skip, *hidden, *out, *exps;  // exps: categorical's scratch, P values
  explicit Workspace(const Args& a) : buffer(activation_floats(a.residual, a.skip, a.hidden, a.outputs) + a.outputs) {
    x = buffer.data();
    h = x + a.residual;
    z = h + 2 * a.residual;
    skip = z + a.residual;
    hidden = skip + a.skip;
    out = hidden + a.hidden;
    exps = out + a.outputs;
  }
};

// One step of batch element n at time t from input class prev; returns the sampled class.
template <typename T>
GMK_CPU_INLINE int64_t step(const Args& a, int64_t n, int64_t t, int64_t prev, Workspace<T>& ws) {
  const int64_t r = a.residual, s = a.skip, k = a.kernel_size;
  const auto* conv_w = static_cast<const T*>(a.conv_weight);
  const auto* conv_b = static_cast<const T*>(a.conv_bias);
  const auto* res_w = static_cast<const T*>(a.res_weight);
  const auto* res_b = static_cast<const T*>(a.res_bias);
  const auto* skip_w = static_cast<const T*>(a.skip_weight);
  const auto* skip_b = static_cast<const T*>(a.skip_bias);
  const auto* cond = static_cast<const T*>(a.cond);
  T* cache = static_cast<T*>(a.cache) + n * a.cache_per_batch;

  std::copy_n(static_cast<const T*>(a.embedding) + prev * r, r, ws.x);
  std::fill_n(ws.skip, s, T(0));
  for (int64_t l = 0; l < a.layers; ++l) {
    const int64_t d = a.layer_info[2 * l], memory = (k - 1) * d;
    T* past = cache + a.layer_info[2 * l + 1];
    // h = b + cond + Σ_j W_j · x[t - (k-1-j)·d]: taps j < k-1 from the ring buffer, the last one is x.
    std::copy_n(conv_b + l * 2 * r, 2 * r, ws.h);
    if (cond) {
      const T* c = cond + ((l * a.batch + n) * a.cond_steps + (a.cond_steps == 1 ? 0 : t)) * 2 * r;
      for (int64_t o = 0; o < 2 * r; ++o) ws.h[o] += c[o];
    }
    for (int64_t j = 0; j < k; ++j) {
      const T* tap = j == k - 1 ? ws.x : past + ((t - (k - 1 - j) * d) % memory + memory) % memory * r;
      matvec_add(tap, r, conv_w + (l * k + j) * r * 2 * r, 2 * r, ws.h);
    }
    if (memory) std::copy_n(ws.x, r, past + t % memory * r);
    for (int64_t c = 0; c < r; ++c) ws.z[c] = gated::forward<true, cpu::Math>(ws.h[c], ws.h[r + c]);
    for (int64_t o = 0; o < s; ++o) ws.skip[o] += skip_b[l * s + o];
    matvec_add(ws.z, r, skip_w + l * r * s, s, ws.skip);
    if (l + 1 < a.layers) {  // the last layer's residual output is never read
      T* residual = ws.h;
      std::copy_n(res_b + l * r, r, residual);
      matvec_add(ws.z, r, res_w + l * r * r, r, residual);
      const T scale = static_cast<T>(a.residual_scale);
      for (int64_t c = 0; c < r; ++c) ws.x[c] = (ws.x[c] + residual[c]) * scale;
    }
  }
  // Head: relu -> 1x1 -> relu -> 1x1.
  for (int64_t o = 0; o < s; ++o) ws.skip[o] = std::max(ws.skip[o], T(0));
  std::copy_n(static_cast<const T*>(a.head_bias1), a.hidden, ws.hidden);
  matvec_add(ws.skip, s, static_cast<const T*>(a.head_weight1), a.hidden, ws.hidden);
  for (int64_t o = 0; o < a.hidden; ++o) ws.hidden[o] = std::max(ws.hidden[o], T(0));
  std::copy_n(static_cast<const T*>(a.head_bias2), a.outputs, ws.out);
  matvec_add(ws.hidden, a.hidden, static_cast<const T*>(a.head_weight2), a.outputs, ws.out);

  const T* u = static_cast<const T*>(a.uniform) + (n * a.steps + t) * a.uniforms;
  const T temperature = static_cast<T>(a.temperature);
  if (!a.mixture) return categorical(ws.out, a.outputs, temperature, u[0], ws.exps);
  const int64_t mixtures = a.outputs / 3;
  const int64_t component = categorical(ws.out, mixtures, temperature, u[0], ws.exps);
  return mixture_class<LibMath>(ws.out[mixtures + component], ws.out[2 * mixtures + component], u[1],
                                static_cast<T>(a.log_scale_min), a.classes);
}

template <typename T>
GMK_CPU_INLINE void generate_elements(const Args& a, int64_t begin, int64_t end) {
  Workspace<T> ws(a);
  for (int64_t n = begin; n < end; ++n) {
    int64_t prev = a.start_class;
    for (int64_t t = 0; t < a.steps; ++t) {
      prev = step(a, n, t, prev, ws);
      a.samples[n * a.steps + t] = prev;
    }
  }
}

GMK_CPU_CLONES void generate_float(const Args& a, int64_t begin, int64_t end) { generate_elements<float>(a, begin, end); }
void generate_double(const Args& a, int64_t begin, int64_t end) { generate_elements<double>(a, begin, end); }

}  // namespace

void generate_cpu(const Args& args) {
  at::parallel_for(0, args.batch, 1, [&](int64_t begin, int64_t end) {
    args.dtype == DType::Float64 ? generate_double(args, begin, end) : generate_float(args, begin, end);
  });
}

}  // namespace gmk::wavenet_generate
