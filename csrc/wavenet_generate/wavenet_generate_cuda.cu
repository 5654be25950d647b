// Persistent CUDA kernels of WaveNet generation (the nv-wavenet idea): one launch produces every
// sample of the sequence. No torch header here (see DESIGN.md). plan_cuda (gmk/wavenet_generate.h)
// picks the kernel.
//
// The cluster kernel (Hopper): one cluster of C blocks per batch element keeps all weights on chip,
// each block 1/C of the output rows of every matrix in its shared memory; see generate_cluster_kernel.
//
// The block kernel: one thread block owns `kB` batch elements (plan_cuda in gmk/wavenet_generate.h picks kB and
// checks that the activations fit) and loops over all steps. Shared memory holds each element's
// activations in float (x, h, z, skip, hidden, output) and, when they fit as well, every weight
// (staged once at the start); otherwise the weights are read through L2 at every step (2.4 MB
// in float32 for nv-wavenet's default L = 16, R = 64, S = 256, A = 256, which L2 holds). Each
// thread computes whole output rows of a 1x1 or of the dilated convolution for the block's kB
// elements, so every weight it loads is used kB times; weights are input-major, so neighbouring
// threads load neighbouring weights. The per-layer ring buffers of past inputs live in global
// memory. One warp per element draws its sample (warp-wide max, exp, chunked prefix sums).
#include <cooperative_groups.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

#include "gmk/cuda_types.cuh"
#include "gmk/gated.h"
#include "gmk/wavenet_generate.h"

namespace gmk::wavenet_generate {
namespace {

constexpr unsigned kFullMask = 0xffffffffu;

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int offset = 16; offset > 0; offset /= 2) v = fmaxf(v, __shfl_xor_sync(kFullMask, v, offset));
  return v;
}

// The weights, each pointing into global memory or into their copy in shared memory.
template <typename T>
struct Weights {
  const T *conv_w, *conv_b, *res_w, *res_b, *skip_w, *skip_b, *head_w1, *head_b1, *head_w2, *head_b2;
};

// Copies count elements of src to dst with the whole block; returns the end of dst.
template <typename T>
__device__ T* stage(const void* src, int64_t count, T* dst) {
  const T* from = static_cast<const T*>(src);
  for (int64_t i = threadIdx.x; i < count; i += blockDim.x) dst[i] = from[i];
  return dst + count;
}

template <typename T>
__device__ Weights<T> load_weights(const Args& a, unsigned char* shared_weights) {
  Weights<T> w{static_cast<const T*>(a.conv_weight), static_cast<const T*>(a.conv_bias),
               static_cast<const T*>(a.res_weight),  static_cast<const T*>(a.res_bias),
               static_cast<const T*>(a.skip_weight), static_cast<const T*>(a.skip_bias),
               static_cast<const T*>(a.head_weight1), static_cast<const T*>(a.head_bias1),
               static_cast<const T*>(a.head_weight2), static_cast<const T*>(a.head_bias2)};
  if (!a.weights_in_shared) return w;
  const int64_t r = a.residual, s = a.skip, h = a.hidden, p = a.outputs, layers = a.layers, k = a.kernel_size;
  T* dst = reinterpret_cast<T*>(shared_weights);
  w.conv_w = dst, dst = stage(a.conv_weight, layers * k * r * 2 * r, dst);
  w.conv_b = dst, dst = stage(a.conv_bias, layers * 2 * r, dst);
  w.res_w = dst, dst = stage(a.res_weight, layers * r * r, dst);
  w.res_b = dst, dst = stage(a.res_bias, layers * r, dst);
  w.skip_w = dst, dst = stage(a.skip_weight, layers * r * s, dst);
  w.skip_b = dst, dst = stage(a.skip_bias, layers * s, dst);
  w.head_w1 = dst, dst = stage(a.head_weight1, s * h, dst);
  w.head_b1 = dst, dst = stage(a.head_bias1, h, dst);
  w.head_w2 = dst, dst = stage(a.head_weight2, h * p, dst);
  w.head_b2 = dst, dst = stage(a.head_bias2, p, dst);
  __syncthreads();
  return w;
}

// acc[b] += Σ_i w[i · stride] · in[b · per + i] for the block's elements b < nb (in: shared memory).
template <typename T, int kB>
__device__ __forceinline__ void dot_rows(const T* w, int64_t stride, const float* in, int64_t per, int64_t cin,
                                         int nb, float (&acc)[kB]) {
#pragma unroll 4  // independent loads in flight: at batch 1 the weights stream from L2 at its latency
  for (int64_t i = 0; i < cin; ++i) {
    const float wi = to_float(w[i * stride]);
#pragma unroll
    for (int b = 0; b < kB; ++b) {
      if (b < nb) acc[b] += wi * in[b * per + i];
    }
  }
}

// The chunked inclusive prefix sums of e_c = exp((v_c - top) / temperature), c < count, in order:
// returns the total, and below = the number of c whose prefix sum is <= target (all lanes agree).
__device__ float scan_exp(const float* v, int64_t count, float top, float temperature, float target, int lane,
                          int64_t& below) {
  float carry = 0;
  below = 0;
  for (int64_t base = 0; base < count; base += 32) {
    const int64_t c = base + lane;
    float sum = c < count ? expf((v[c] - top) / temperature) : 0.0f;
#pragma unroll
    for (int offset = 1; offset < 32; offset *= 2) {
      const float other = __shfl_up_sync(kFullMask, sum, offset);
      if (lane >= offset) sum += other;
    }
    below += __popc(__ballot_sync(kFullMask, c < count && carry + sum <= target));
    carry += __shfl_sync(kFullMask, sum, 31);
  }
  return carry;
}

// The inverse CDF of softmax(v / temperature) at u by one warp (see the reference's sampling rule).
__device__ int64_t warp_categorical(const float* v, int64_t count, float temperature, float u, int lane) {
  float top = -INFINITY;
  for (int64_t c = lane; c < count; c += 32) top = fmaxf(top, v[c]);
  top = warp_max(top);
  int64_t below;
  const float total = scan_exp(v, count, top, temperature, -1.0f, lane, below);
  scan_exp(v, count, top, temperature, u * total, lane, below);
  return below < count - 1 ? below : count - 1;
}

template <typename T, int kB>
__global__ void __launch_bounds__(kGenerateThreads) generate_kernel(const Args a) {
  extern __shared__ __align__(16) unsigned char shared[];
  __shared__ int64_t prev[kB];
  const int64_t r = a.residual, s = a.skip, h = a.hidden, p = a.outputs, k = a.kernel_size, steps = a.steps;
  const int64_t per = activation_floats(r, s, h, p);  // floats of one element's activations
  float* const x = reinterpret_cast<float*>(shared);   // element b's x is x[b * per + c]
  float* const hv = x + r;
  float* const z = hv + 2 * r;
  float* const skip = z + r;
  float* const hidden = skip + s;
  float* const out = hidden + h;
  const Weights<T> w = load_weights<T>(a, shared + (kB * per * 4 + 15) / 16 * 16);
  const auto* embedding = static_cast<const T*>(a.embedding);
  const auto* cond = static_cast<const T*>(a.cond);
  const auto* uniform = static_cast<const float*>(a.uniform);
  auto* cache = static_cast<float*>(a.cache);
  const int64_t n0 = static_cast<int64_t>(blockIdx.x) * kB;
  const int nb = static_cast<int>(a.batch - n0 < kB ? a.batch - n0 : kB);
  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  if (tid < kB) prev[tid] = a.start_class;
  __syncthreads();

  for (int64_t t = 0; t < steps; ++t) {
    for (int64_t i = tid; i < nb * r; i += blockDim.x) {
      const int64_t b = i / r, c = i % r;
      x[b * per + c] = to_float(embedding[prev[b] * r + c]);
    }
    for (int64_t i = tid; i < nb * s; i += blockDim.x) skip[i / s * per + i % s] = 0.0f;
    __syncthreads();

    for (int64_t l = 0; l < a.layers; ++l) {
      const int64_t d = a.layer_info[2 * l], memory = (k - 1) * d, past = a.layer_info[2 * l + 1];
      // h = b + cond + Σ_j W_j · x[t - (k-1-j)·d]; taps j < k-1 from the ring buffers.
      for (int64_t o = tid; o < 2 * r; o += blockDim.x) {
        float acc[kB];
        const float bias = to_float(w.conv_b[l * 2 * r + o]);
#pragma unroll
        for (int b = 0; b < kB; ++b) {
          acc[b] = bias;
          if (cond != nullptr && b < nb) {
            const int64_t tc = a.cond_steps == 1 ? 0 : t;
            acc[b] += to_float(cond[((l * a.batch + n0 + b) * a.cond_steps + tc) * 2 * r + o]);
          }
        }
        for (int64_t j = 0; j + 1 < k; ++j) {
          const int64_t row = ((t - (k - 1 - j) * d) % memory + memory) % memory;
          const float* taps = cache + n0 * a.cache_per_batch + past + row * r;  // element b's at b·cache_per_batch
          dot_rows<T, kB>(w.conv_w + (l * k + j) * r * 2 * r + o, 2 * r, taps, a.cache_per_batch, r, nb, acc);
        }
        dot_rows<T, kB>(w.conv_w + (l * k + k - 1) * r * 2 * r + o, 2 * r, x, per, r, nb, acc);
#pragma unroll
        for (int b = 0; b < kB; ++b) {
          if (b < nb) hv[b * per + o] = acc[b];
        }
      }
      __syncthreads();  // every tap of this step is read: x_t may overwrite row t mod M
      if (memory > 0) {
        for (int64_t i = tid; i < nb * r; i += blockDim.x) {
          const int64_t b = i / r, c = i % r;
          cache[(n0 + b) * a.cache_per_batch + past + (t % memory) * r + c] = x[b * per + c];
        }
      }
      for (int64_t i = tid; i < nb * r; i += blockDim.x) {
        const int64_t b = i / r, c = i % r;
        z[b * per + c] = gated::forward<true>(hv[b * per + c], hv[b * per + r + c]);
      }
      __syncthreads();
      // Residual rows (all layers but the last, whose x is never read) then skip rows, z -> R and S.
      const int64_t res_rows = l + 1 < a.layers ? r : 0;
      for (int64_t row = tid; row < res_rows + s; row += blockDim.x) {
        const bool residual = row < res_rows;
        const int64_t o = residual ? row : row - res_rows;
        float acc[kB];
#pragma unroll
        for (int b = 0; b < kB; ++b) acc[b] = 0.0f;
        if (residual) {
          dot_rows<T, kB>(w.res_w + l * r * r + o, r, z, per, r, nb, acc);
          const float bias = to_float(w.res_b[l * r + o]);
#pragma unroll
          for (int b = 0; b < kB; ++b) {
            if (b < nb) x[b * per + o] = (x[b * per + o] + (bias + acc[b])) * a.residual_scale;
          }
        } else {
          dot_rows<T, kB>(w.skip_w + l * r * s + o, s, z, per, r, nb, acc);
          const float bias = to_float(w.skip_b[l * s + o]);
#pragma unroll
          for (int b = 0; b < kB; ++b) {
            if (b < nb) skip[b * per + o] += bias + acc[b];
          }
        }
      }
      __syncthreads();
    }

    // Head: relu -> 1x1 (S -> H) -> relu -> 1x1 (H -> P).
    for (int64_t i = tid; i < nb * s; i += blockDim.x) {
      float& v = skip[i / s * per + i % s];
      v = fmaxf(v, 0.0f);
    }
    __syncthreads();
    for (int64_t o = tid; o < h; o += blockDim.x) {
      float acc[kB];
#pragma unroll
      for (int b = 0; b < kB; ++b) acc[b] = to_float(w.head_b1[o]);
      dot_rows<T, kB>(w.head_w1 + o, h, skip, per, s, nb, acc);
#pragma unroll
      for (int b = 0; b < kB; ++b) {
        if (b < nb) hidden[b * per + o] = fmaxf(acc[b], 0.0f);
      }
    }
    __syncthreads();
    for (int64_t o = tid; o < p; o += blockDim.x) {
      float acc[kB];
#pragma unroll
      for (int b = 0; b < kB; ++b) acc[b] = to_float(w.head_b2[o]);
      dot_rows<T, kB>(w.head_w2 + o, p, hidden, per, h, nb, acc);
#pragma unroll
      for (int b = 0; b < kB; ++b) {
        if (b < nb) out[b * per + o] = acc[b];
      }
    }
    __syncthreads();

    // Warp b draws element b's sample.
    if (warp < nb) {
      const float* logits = out + warp * per;
      const float* u = uniform + ((n0 + warp) * steps + t) * a.uniforms;
      int64_t sample;
      if (!a.mixture) {
        sample = warp_categorical(logits, p, a.temperature, u[0], lane);
      } else {
        const int64_t mixtures = p / 3;
        const int64_t component = warp_categorical(logits, mixtures, a.temperature, u[0], lane);
        sample = mixture_class<LibMath>(logits[mixtures + component], logits[2 * mixtures + component], u[1],
                                        a.log_scale_min, a.classes);
      }
      if (lane == 0) {
        prev[warp] = sample;
        a.samples[(n0 + warp) * steps + t] = sample;
      }
    }
    __syncthreads();
  }
}

// --- the cluster kernel (compute capability >= 9.0) ---------------------------------------------

namespace cg = cooperative_groups;

// out(row, Σ_i w[i · ld + row] · input(i)) for row < rows, by the whole block: each row by `group`
// consecutive lanes (a power of 2 <= 32: as many as the block has threads per row), summed by shuffles.
template <typename T, typename Input, typename Out>
__device__ __forceinline__ void block_matvec(const T* w, int64_t ld, int64_t cin, int64_t rows, Input input,
                                             Out out) {
  int group = 32;
  while (group > 1 && rows * group > static_cast<int64_t>(blockDim.x)) group /= 2;
  const int part = threadIdx.x % group;
  const int64_t rows_per_pass = blockDim.x / group;
  // Every thread makes the same passes, so the shuffles always see whole warps.
  for (int64_t base = 0; base < rows; base += rows_per_pass) {
    const int64_t row = base + threadIdx.x / group;
    float acc = 0.0f;
    if (row < rows) {
      for (int64_t i = part; i < cin; i += group) acc += to_float(w[i * ld + row]) * input(i);
    }
    for (int offset = group / 2; offset > 0; offset /= 2) acc += __shfl_down_sync(kFullMask, acc, offset, group);
    if (part == 0 && row < rows) out(row, acc);
  }
}

// dst[e] = src[index(e)] for e < count (the block's share of one weight); returns the end of dst.
template <typename T, typename Index>
__device__ T* stage_share(const void* src, int64_t count, T* dst, Index index) {
  const T* from = static_cast<const T*>(src);
  for (int64_t e = threadIdx.x; e < count; e += blockDim.x) dst[e] = from[index(e)];
  return dst + count;
}

// One cluster of C = a.cluster_size blocks per batch element. Block q owns the output rows
// [q·R/C, (q+1)·R/C) of the gate (its filter and gate channels of h), of z and of the residual 1x1,
// [q·S/C, …) of the skip sum, [q·H/C, …) of the hidden layer and [q·P/C, …) of the output, with
// those rows of every weight staged in its shared memory (input-major, rows of its share only).
// Each block writes the rows it computes into every block's copy (distributed shared memory), then the
// cluster synchronises: every block holds all of z, x, relu(skip), hidden and the output when it reads
// them. Every block draws the same sample from its copy of the output (same data, same code). What a
// step reads from global memory (the embedding row, every layer's taps of earlier steps, the
// conditioning, the uniforms) is loaded at its start, so the chain of layers runs on shared memory and
// cluster barriers alone: 2 barriers per layer, 3 for the head.
template <typename T>
__global__ void __launch_bounds__(kGenerateThreads) generate_cluster_kernel(const Args a) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 900
  __trap();  // never launched: plan_cuda takes this kernel on compute capability >= 9.0 only
#else
  extern __shared__ __align__(16) unsigned char shared[];
  __shared__ int64_t prev;
  cg::cluster_group cluster = cg::this_cluster();
  const int64_t c = a.cluster_size, q = cluster.block_rank(), n = blockIdx.x / c;
  const int64_t r = a.residual, s = a.skip, h = a.hidden, p = a.outputs, k = a.kernel_size, layers = a.layers;
  const int64_t rc = r / c, sc = s / c, hc = h / c, pc = p / c, steps = a.steps;
  float* const x = reinterpret_cast<float*>(shared);
  float* const z = x + r;
  float* const skip = z + r;  // relu(Σ skip), all S rows, gathered for the head
  float* const hidden = skip + s;
  float* const out = hidden + h;
  float* const hv = out + p;              // this block's rows of h: its R/C filter, then its R/C gate channels
  float* const skip_mine = hv + 2 * rc;   // this block's S/C rows of Σ skip
  // Loaded at the start of each step, off the chain of dependent layers: the inputs of earlier steps
  // that the layers' taps j < k-1 read (L, k-1, R), this block's rows of the conditioning (L, 2R/C), and
  // the step's uniforms.
  float* const taps = skip_mine + sc;
  float* const cond_mine = taps + layers * (k - 1) * r;
  float* const u = cond_mine + layers * 2 * rc;
  T* w = reinterpret_cast<T*>(shared + (4 * cluster_activation_floats(r, s, h, p, c, layers, k) + 15) / 16 * 16);

  // Global column of column e % width of a share: the filter and gate channels for conv, else first + e.
  const auto conv_column = [&](int64_t col) { return col < rc ? q * rc + col : r + q * rc + col - rc; };
  const T* conv_w = w;
  w = stage_share<T>(a.conv_weight, layers * k * r * 2 * rc, w,
                     [&](int64_t e) { return e / (2 * rc) * 2 * r + conv_column(e % (2 * rc)); });
  const T* conv_b = w;
  w = stage_share<T>(a.conv_bias, layers * 2 * rc, w,
                     [&](int64_t e) { return e / (2 * rc) * 2 * r + conv_column(e % (2 * rc)); });
  const T* res_w = w;
  w = stage_share<T>(a.res_weight, layers * r * rc, w, [&](int64_t e) { return e / rc * r + q * rc + e % rc; });
  const T* res_b = w;
  w = stage_share<T>(a.res_bias, layers * rc, w, [&](int64_t e) { return e / rc * r + q * rc + e % rc; });
  const T* skip_w = w;
  w = stage_share<T>(a.skip_weight, layers * r * sc, w, [&](int64_t e) { return e / sc * s + q * sc + e % sc; });
  const T* skip_b = w;
  w = stage_share<T>(a.skip_bias, layers * sc, w, [&](int64_t e) { return e / sc * s + q * sc + e % sc; });
  const T* head_w1 = w;
  w = stage_share<T>(a.head_weight1, s * hc, w, [&](int64_t e) { return e / hc * h + q * hc + e % hc; });
  const T* head_b1 = w;
  w = stage_share<T>(a.head_bias1, hc, w, [&](int64_t e) { return q * hc + e; });
  const T* head_w2 = w;
  w = stage_share<T>(a.head_weight2, h * pc, w, [&](int64_t e) { return e / pc * p + q * pc + e % pc; });
  const T* head_b2 = w;
  stage_share<T>(a.head_bias2, pc, w, [&](int64_t e) { return q * pc + e; });
  if (threadIdx.x == 0) prev = a.start_class;
  cluster.sync();  // every block of the cluster runs and has staged its share before any remote write

  // buffer[index] = v in every block of the cluster (this one included).
  const auto store_all = [&](float* buffer, int64_t index, float v) {
    for (int64_t rank = 0; rank < c; ++rank) cluster.map_shared_rank(buffer, static_cast<unsigned>(rank))[index] = v;
  };
  const auto* embedding = static_cast<const T*>(a.embedding);
  const auto* cond = static_cast<const T*>(a.cond);
  float* const cache = static_cast<float*>(a.cache) + n * a.cache_per_batch;
  const int tid = threadIdx.x, lane = tid % 32;

  for (int64_t t = 0; t < steps; ++t) {
    // Row τ mod M of a ring buffer holds time τ; the taps read times before t, written at earlier steps
    // (x_t overwrites its row after the cluster barrier that follows every block's loads here).
    for (int64_t i = tid; i < layers * (k - 1) * r; i += blockDim.x) {
      const int64_t l = i / ((k - 1) * r), j = i / r % (k - 1), channel = i % r;
      const int64_t d = a.layer_info[2 * l], memory = (k - 1) * d;
      const int64_t row = ((t - (k - 1 - j) * d) % memory + memory) % memory;
      taps[i] = cache[a.layer_info[2 * l + 1] + row * r + channel];
    }
    if (cond != nullptr) {
      for (int64_t i = tid; i < layers * 2 * rc; i += blockDim.x) {
        const int64_t l = i / (2 * rc), tc = a.cond_steps == 1 ? 0 : t;
        cond_mine[i] = to_float(cond[((l * a.batch + n) * a.cond_steps + tc) * 2 * r + conv_column(i % (2 * rc))]);
      }
    }
    if (tid < a.uniforms) u[tid] = static_cast<const float*>(a.uniform)[(n * steps + t) * a.uniforms + tid];
    for (int64_t i = tid; i < r; i += blockDim.x) x[i] = to_float(embedding[prev * r + i]);
    for (int64_t i = tid; i < sc; i += blockDim.x) skip_mine[i] = 0.0f;
    __syncthreads();
    for (int64_t l = 0; l < layers; ++l) {
      const int64_t memory = (k - 1) * a.layer_info[2 * l];
      float* const past = cache + a.layer_info[2 * l + 1];
      const float* const layer_taps = taps + l * (k - 1) * r;
      // This block's rows of h = b + cond + Σ_j W_j · x[t - (k-1-j)·d]; input i is tap i / R, channel i % R.
      block_matvec(
          conv_w + l * k * r * 2 * rc, 2 * rc, k * r, 2 * rc,
          [&](int64_t i) { return i < (k - 1) * r ? layer_taps[i] : x[i - (k - 1) * r]; },
          [&](int64_t row, float acc) {
            const float conditioning = cond == nullptr ? 0.0f : cond_mine[l * 2 * rc + row];
            hv[row] = acc + to_float(conv_b[l * 2 * rc + row]) + conditioning;
          });
      __syncthreads();
      for (int64_t i = tid; i < rc; i += blockDim.x) store_all(z, q * rc + i, gated::forward<true>(hv[i], hv[rc + i]));
      cluster.sync();  // all of z in every block; every block has read every tap of this step
      if (memory > 0) {
        for (int64_t i = tid; i < rc; i += blockDim.x) past[t % memory * r + q * rc + i] = x[q * rc + i];
      }
      __syncthreads();  // x_t's rows are in the ring buffer before the residual replaces them
      if (l + 1 < layers) {  // the last layer's x is never read
        block_matvec(
            res_w + l * r * rc, rc, r, rc, [&](int64_t i) { return z[i]; },
            [&](int64_t row, float acc) {
              const int64_t channel = q * rc + row;
              store_all(x, channel, (x[channel] + (to_float(res_b[l * rc + row]) + acc)) * a.residual_scale);
            });
      }
      block_matvec(
          skip_w + l * r * sc, sc, r, sc, [&](int64_t i) { return z[i]; },
          [&](int64_t row, float acc) { skip_mine[row] += to_float(skip_b[l * sc + row]) + acc; });
      cluster.sync();  // all of x_{l+1} in every block; z may be overwritten
    }

    // Head: relu -> 1x1 (S -> H) -> relu -> 1x1 (H -> P), each block its rows, gathered everywhere.
    for (int64_t i = tid; i < sc; i += blockDim.x) store_all(skip, q * sc + i, fmaxf(skip_mine[i], 0.0f));
    cluster.sync();
    block_matvec(
        head_w1, hc, s, hc, [&](int64_t i) { return skip[i]; },
        [&](int64_t row, float acc) { store_all(hidden, q * hc + row, fmaxf(acc + to_float(head_b1[row]), 0.0f)); });
    cluster.sync();
    block_matvec(
        head_w2, pc, h, pc, [&](int64_t i) { return hidden[i]; },
        [&](int64_t row, float acc) { store_all(out, q * pc + row, acc + to_float(head_b2[row])); });
    cluster.sync();
    if (tid < 32) {
      int64_t sample;
      if (!a.mixture) {
        sample = warp_categorical(out, p, a.temperature, u[0], lane);
      } else {
        const int64_t mixtures = p / 3;
        const int64_t component = warp_categorical(out, mixtures, a.temperature, u[0], lane);
        sample = mixture_class<LibMath>(out[mixtures + component], out[2 * mixtures + component], u[1],
                                        a.log_scale_min, a.classes);
      }
      if (lane == 0) {
        prev = sample;
        if (q == 0) a.samples[n * steps + t] = sample;
      }
    }
    __syncthreads();
  }
  cluster.sync();  // no block leaves while another may still write into its shared memory
#endif
}

template <typename T>
cudaLaunchConfig_t cluster_config(const Args& a, cudaStream_t stream, cudaLaunchAttribute* attribute,
                                  cudaError_t& err) {
  const auto kernel = generate_cluster_kernel<T>;
  err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(a.shared_bytes));
  if (err == cudaSuccess && a.cluster_size > 8) {
    err = cudaFuncSetAttribute(kernel, cudaFuncAttributeNonPortableClusterSizeAllowed, 1);
  }
  cudaLaunchConfig_t config = {};
  config.gridDim = dim3(static_cast<unsigned>(a.batch * a.cluster_size));
  config.blockDim = dim3(kGenerateThreads);
  config.dynamicSmemBytes = static_cast<size_t>(a.shared_bytes);
  config.stream = stream;
  attribute->id = cudaLaunchAttributeClusterDimension;
  attribute->val.clusterDim.x = static_cast<unsigned>(a.cluster_size);
  attribute->val.clusterDim.y = 1;
  attribute->val.clusterDim.z = 1;
  config.attrs = attribute;
  config.numAttrs = 1;
  return config;
}

template <typename T>
cudaError_t launch_cluster(const Args& a, cudaStream_t stream) {
  cudaLaunchAttribute attribute;
  cudaError_t err;
  const cudaLaunchConfig_t config = cluster_config<T>(a, stream, &attribute, err);
  if (err != cudaSuccess) return err;
  return cudaLaunchKernelEx(&config, generate_cluster_kernel<T>, a);
}

template <typename T>
cudaError_t cluster_capacity(const Args& a, int* clusters) {
  cudaLaunchAttribute attribute;
  cudaError_t err;
  cudaLaunchConfig_t config = cluster_config<T>(a, nullptr, &attribute, err);
  if (err != cudaSuccess) return err;
  config.gridDim = dim3(static_cast<unsigned>(a.cluster_size));
  return cudaOccupancyMaxActiveClusters(clusters, generate_cluster_kernel<T>, &config);
}

// --- launchers ---------------------------------------------------------------------------------

template <typename T, int kB>
cudaError_t launch(const Args& a, cudaStream_t stream) {
  const auto kernel = generate_kernel<T, kB>;
  // Without the opt-in a kernel's dynamic shared memory is limited to 48 KB less its static shared memory
  // (prev): a launch of exactly 48 KB of activations would fail.
  if (a.shared_bytes + kB * static_cast<int64_t>(sizeof(int64_t)) > 48 * 1024) {
    const cudaError_t err =
        cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(a.shared_bytes));
    if (err != cudaSuccess) return err;
  }
  const int64_t blocks = (a.batch + kB - 1) / kB;
  kernel<<<static_cast<unsigned>(blocks), kGenerateThreads, a.shared_bytes, stream>>>(a);
  return cudaGetLastError();
}

template <typename T>
cudaError_t launch_typed(const Args& a, cudaStream_t stream) {
  if (a.cluster_size > 0) return launch_cluster<T>(a, stream);
  switch (a.batch_per_block) {
    case 1: return launch<T, 1>(a, stream);
    case 2: return launch<T, 2>(a, stream);
    case 4: return launch<T, 4>(a, stream);
    case 8: return launch<T, 8>(a, stream);
    default: return cudaErrorInvalidConfiguration;
  }
}

}  // namespace

cudaError_t max_active_clusters_cuda(const Args& args, int* clusters) {
  return with_cuda_type(args.dtype, [&](auto tag) { return cluster_capacity<decltype(tag)>(args, clusters); });
}

cudaError_t generate_cuda(const Args& args, cudaStream_t stream) {
  static_assert(kMaxBatchPerBlock * 32 <= kGenerateThreads, "one warp samples each element of a block");
  return with_cuda_type(args.dtype, [&](auto tag) { return launch_typed<decltype(tag)>(args, stream); });
}

}  // namespace gmk::wavenet_generate
