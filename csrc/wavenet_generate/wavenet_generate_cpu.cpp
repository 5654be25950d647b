// CPU kernel of WaveNet generation: groups of up to kGroup batch elements run the whole sequence on one
// thread (groups in parallel), one step at a time, with the per-layer ring buffers of
// gmk/wavenet_generate.h. Weights arrive input-major in the compute type (float, or double for float64),
// so every 1x1 and every tap of the dilated convolution is a run of y[0..cout) += x[i] · w[i, 0..cout)
// per element, which the compiler vectorises (compiled per instruction set: GMK_CPU_CLONES); each weight
// row is read once per step for the whole group.
#include <ATen/Parallel.h>

#include <algorithm>
#include <vector>

#include "gmk/cpu_math.h"
#include "gmk/gated.h"
#include "gmk/wavenet_generate.h"

namespace gmk::wavenet_generate {
namespace {

constexpr int64_t kGroup = 8;  // batch elements stepped together: each weight row loaded once for all

// y[b·cout + o] += Σ_i xs[b][i] · w[i·cout + o] for the group's elements b < g and o < cout: the
// row w[i, :] stays in L1 while every element's axpy reads it.
template <typename T>
GMK_CPU_INLINE void matvec_add(const T* const* xs, int64_t g, int64_t cin, const T* w, int64_t cout, T* y) {
  for (int64_t i = 0; i < cin; ++i) {
    const T* row = w + i * cout;
    for (int64_t b = 0; b < g; ++b) {
      const T xi = xs[b][i];
      T* yb = y + b * cout;
      for (int64_t o = 0; o < cout; ++o) yb[o] += xi * row[o];
    }
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

// The activations of a group of up to kGroup elements, element b's x at x + b·R and so on.
template <typename T>
struct Workspace {
  std::vector<T> buffer;
  T *x, *h, *z, *skip, *hidden, *out, *exps;  // exps: categorical's scratch, P values
  explicit Workspace(const Args& a)
      : buffer(kGroup * (4 * a.residual + a.skip + a.hidden + a.outputs) + a.outputs) {
    x = buffer.data();
    h = x + kGroup * a.residual;
    z = h + kGroup * 2 * a.residual;
    skip = z + kGroup * a.residual;
    hidden = skip + kGroup * a.skip;
    out = hidden + kGroup * a.hidden;
    exps = out + kGroup * a.outputs;
  }
};

// Pointers to the g rows of width `stride` of buffer, as matvec_add takes its inputs.
template <typename T>
struct Rows {
  const T* row[kGroup];
  Rows(const T* buffer, int64_t stride, int64_t g) {
    for (int64_t b = 0; b < g; ++b) row[b] = buffer + b * stride;
  }
};

template <typename T>
GMK_CPU_INLINE void add_rows(T* y, const T* bias, int64_t g, int64_t width) {
  for (int64_t b = 0; b < g; ++b) {
    for (int64_t o = 0; o < width; ++o) y[b * width + o] += bias[o];
  }
}

// One step at time t of the elements n0 … n0 + g - 1 from their input classes prev[b]; writes their
// samples into prev and a.samples.
template <typename T>
GMK_CPU_INLINE void step(const Args& a, int64_t n0, int64_t g, int64_t t, int64_t* prev, Workspace<T>& ws) {
  const int64_t r = a.residual, s = a.skip, k = a.kernel_size;
  const auto* conv_w = static_cast<const T*>(a.conv_weight);
  const auto* conv_b = static_cast<const T*>(a.conv_bias);
  const auto* res_w = static_cast<const T*>(a.res_weight);
  const auto* res_b = static_cast<const T*>(a.res_bias);
  const auto* skip_w = static_cast<const T*>(a.skip_weight);
  const auto* skip_b = static_cast<const T*>(a.skip_bias);
  const auto* cond = static_cast<const T*>(a.cond);
  T* const cache = static_cast<T*>(a.cache) + n0 * a.cache_per_batch;  // element b's at b · cache_per_batch

  for (int64_t b = 0; b < g; ++b) std::copy_n(static_cast<const T*>(a.embedding) + prev[b] * r, r, ws.x + b * r);
  std::fill_n(ws.skip, g * s, T(0));
  for (int64_t l = 0; l < a.layers; ++l) {
    const int64_t d = a.layer_info[2 * l], memory = (k - 1) * d, past = a.layer_info[2 * l + 1];
    // h = b + cond + Σ_j W_j · x[t - (k-1-j)·d]: taps j < k-1 from the ring buffers, the last one is x.
    std::fill_n(ws.h, g * 2 * r, T(0));
    add_rows(ws.h, conv_b + l * 2 * r, g, 2 * r);
    if (cond) {
      for (int64_t b = 0; b < g; ++b) {
        const T* c = cond + ((l * a.batch + n0 + b) * a.cond_steps + (a.cond_steps == 1 ? 0 : t)) * 2 * r;
        for (int64_t o = 0; o < 2 * r; ++o) ws.h[b * 2 * r + o] += c[o];
      }
    }
    for (int64_t j = 0; j < k; ++j) {
      Rows<T> taps(ws.x, r, g);
      if (j < k - 1) {
        const int64_t row = ((t - (k - 1 - j) * d) % memory + memory) % memory;
        for (int64_t b = 0; b < g; ++b) taps.row[b] = cache + b * a.cache_per_batch + past + row * r;
      }
      matvec_add(taps.row, g, r, conv_w + (l * k + j) * r * 2 * r, 2 * r, ws.h);
    }
    if (memory) {
      for (int64_t b = 0; b < g; ++b) {
        std::copy_n(ws.x + b * r, r, cache + b * a.cache_per_batch + past + t % memory * r);
      }
    }
    for (int64_t b = 0; b < g; ++b) {
      const T* hb = ws.h + b * 2 * r;
      for (int64_t c = 0; c < r; ++c) ws.z[b * r + c] = gated::forward<true, cpu::Math>(hb[c], hb[r + c]);
    }
    const Rows<T> z(ws.z, r, g);
    add_rows(ws.skip, skip_b + l * s, g, s);
    matvec_add(z.row, g, r, skip_w + l * r * s, s, ws.skip);
    if (l + 1 < a.layers) {  // the last layer's residual output is never read
      T* residual = ws.h;  // (g, R) now
      std::fill_n(residual, g * r, T(0));
      add_rows(residual, res_b + l * r, g, r);
      matvec_add(z.row, g, r, res_w + l * r * r, r, residual);
      const T scale = static_cast<T>(a.residual_scale);
      for (int64_t i = 0; i < g * r; ++i) ws.x[i] = (ws.x[i] + residual[i]) * scale;
    }
  }
  // Head: relu -> 1x1 -> relu -> 1x1.
  for (int64_t i = 0; i < g * s; ++i) ws.skip[i] = std::max(ws.skip[i], T(0));
  std::fill_n(ws.hidden, g * a.hidden, T(0));
  add_rows(ws.hidden, static_cast<const T*>(a.head_bias1), g, a.hidden);
  matvec_add(Rows<T>(ws.skip, s, g).row, g, s, static_cast<const T*>(a.head_weight1), a.hidden, ws.hidden);
  for (int64_t i = 0; i < g * a.hidden; ++i) ws.hidden[i] = std::max(ws.hidden[i], T(0));
  std::fill_n(ws.out, g * a.outputs, T(0));
  add_rows(ws.out, static_cast<const T*>(a.head_bias2), g, a.outputs);
  matvec_add(Rows<T>(ws.hidden, a.hidden, g).row, g, a.hidden, static_cast<const T*>(a.head_weight2), a.outputs,
             ws.out);

  const T temperature = static_cast<T>(a.temperature);
  for (int64_t b = 0; b < g; ++b) {
    const T* out = ws.out + b * a.outputs;
    const T* u = static_cast<const T*>(a.uniform) + ((n0 + b) * a.steps + t) * a.uniforms;
    if (!a.mixture) {
      prev[b] = categorical(out, a.outputs, temperature, u[0], ws.exps);
    } else {
      const int64_t mixtures = a.outputs / 3;
      const int64_t component = categorical(out, mixtures, temperature, u[0], ws.exps);
      prev[b] = mixture_class<LibMath>(out[mixtures + component], out[2 * mixtures + component], u[1],
                                       static_cast<T>(a.log_scale_min), a.classes);
    }
    a.samples[(n0 + b) * a.steps + t] = prev[b];
  }
}

template <typename T>
GMK_CPU_INLINE void generate_elements(const Args& a, int64_t begin, int64_t end) {
  Workspace<T> ws(a);
  for (int64_t n0 = begin; n0 < end; n0 += kGroup) {
    const int64_t g = std::min(kGroup, end - n0);
    int64_t prev[kGroup];
    std::fill_n(prev, g, a.start_class);
    for (int64_t t = 0; t < a.steps; ++t) step(a, n0, g, t, prev, ws);
  }
}

GMK_CPU_CLONES void generate_float(const Args& a, int64_t begin, int64_t end) {
  generate_elements<float>(a, begin, end);
}
void generate_double(const Args& a, int64_t begin, int64_t end) { generate_elements<double>(a, begin, end); }

}  // namespace

void generate_cpu(const Args& args) {
  at::parallel_for(0, args.batch, kGroup, [&](int64_t begin, int64_t end) {
    args.dtype == DType::Float64 ? generate_double(args, begin, end) : generate_float(args, begin, end);
  });
}

}  // namespace gmk::wavenet_generate
