// WaveNet generation (arXiv 1609.03499; nv-wavenet's inference): the arguments of the CPU and CUDA
// kernels, the math they share, and the host-side plan of the persistent CUDA kernel (which
// configurations fit on chip). The sampling rule is written out in gmkernels/reference/wavenet_generate.py.
#pragma once
#include <cmath>
#include <cstdint>
#include <string>

#include "gmk/common.h"

#if defined(GMK_WITH_CUDA)
#include <cuda_runtime_api.h>
#endif

namespace gmk::wavenet_generate {

// All weights are stored input-major ("transposed") by the op, so that the threads (CUDA) or the
// vector lanes (CPU) that compute neighbouring outputs read neighbouring weights:
//   embedding (A, R); conv_weight (L, k, R_in, 2R_out); conv_bias (L, 2R); res_weight (L, R_in, R_out);
//   res_bias (L, R); skip_weight (L, R_in, S); skip_bias (L, S); head_weight1 (S, H); head_bias1 (H);
//   head_weight2 (H, P); head_bias2 (P); cond (L, N, cond_steps, 2R) or null.
// uniform (N, T, U); samples (N, T) int64. layer_info (L, 2) int64: dilation d_l and the offset of
// layer l's ring buffer inside one batch element's cache of cache_per_batch values: M_l = (k-1)·d_l
// rows of R, row τ mod M_l holding the layer's input at time τ (zero before the start).
struct Args {
  int64_t batch = 0, steps = 0, layers = 0, residual = 0, skip = 0, hidden = 0, outputs = 0, classes = 0;
  int64_t kernel_size = 0, cond_steps = 0, uniforms = 0, cache_per_batch = 0, start_class = 0;
  const void *embedding = nullptr, *conv_weight = nullptr, *conv_bias = nullptr, *res_weight = nullptr,
             *res_bias = nullptr, *skip_weight = nullptr, *skip_bias = nullptr, *head_weight1 = nullptr,
             *head_bias1 = nullptr, *head_weight2 = nullptr, *head_bias2 = nullptr, *cond = nullptr,
             *uniform = nullptr;
  const int64_t* layer_info = nullptr;
  void* cache = nullptr;  // float (double for float64 weights), zero-initialised
  int64_t* samples = nullptr;
  float residual_scale = 1, temperature = 1, log_scale_min = -7;
  bool mixture = false;
  DType dtype = DType::Float32;
  // CUDA only, from plan_cuda: the cluster kernel's cluster size (0: the block kernel), the block kernel's
  // batch elements per block and whether it stages the weights in shared memory.
  int64_t cluster_size = 0, batch_per_block = 1, shared_bytes = 0;
  bool weights_in_shared = false;
};

constexpr float kMixtureEps = 1e-5f;  // the logistic's uniform is clamped to [eps, 1 - eps]

// The class of the logistic mixture's draw: v = mean + e^{log_scale} (log u - log(1 - u)), log_scale
// clamped below at log_scale_min and u to [eps, 1 - eps], v clamped to [-1, 1], then the nearest of
// the levels 2q / (classes - 1) - 1.
template <typename Math, typename T>
GMK_HOST_DEVICE int64_t mixture_class(T mean, T log_scale, T u, T log_scale_min, int64_t classes) {
  log_scale = log_scale < log_scale_min ? log_scale_min : log_scale;
  u = u < T(kMixtureEps) ? T(kMixtureEps) : u > T(1) - T(kMixtureEps) ? T(1) - T(kMixtureEps) : u;
  T v = mean + Math::exp(log_scale) * (Math::log(u) - Math::log1p(-u));
  v = v < T(-1) ? T(-1) : v > T(1) ? T(1) : v;
  const int64_t q = static_cast<int64_t>(floor((v + T(1)) / T(2) * T(classes - 1) + T(0.5)));
  return q < 0 ? 0 : q > classes - 1 ? classes - 1 : q;
}

// --- the persistent CUDA kernels' plan (host code; the op and the Python tests call it) --------

// Two persistent kernels; each generates every step in one launch. The ring buffers live in global memory.
//
// The cluster kernel (compute capability >= 9.0): one thread-block cluster of C blocks per batch element,
// each block holding 1/C of every weight matrix (its share of the output rows) in shared memory, so the
// whole network stays on chip across C multiprocessors; the blocks exchange their rows of z, x, relu(skip),
// hidden and output through distributed shared memory, with 2 cluster barriers per layer and 3 for the
// head. Taken when C (2 … 16) divides R, S, H and P, the shares fit in shared memory, and every element's
// cluster is resident at once (batch · C <= multiprocessors).
//
// The block kernel, otherwise: one thread block generates `batch_per_block` batch elements. Its shared
// memory holds each element's activations in float: x (R), h (2R), z (R), skip (S), hidden (H), output
// (P); when they fit as well, all weights (their dtype), which are otherwise read through L2 at every step.
struct CudaPlan {
  int64_t cluster_size = 0, batch_per_block = 0, shared_bytes = 0, weight_bytes = 0;
  bool weights_in_shared = false;
  std::string error;  // empty when the configuration fits
};

constexpr int64_t kClusterSizes[] = {2, 4, 8, 16};

// The cluster kernel's float activations per block: x, z (R each), relu(skip) (S), hidden (H), output (P),
// its share of h (2R/C) and of the skip sum (S/C), and what each step reads from global memory, loaded
// at its start: every layer's taps of earlier steps (L (k-1) R), its share of the conditioning (L 2R/C)
// and the step's uniforms (2).
constexpr int64_t cluster_activation_floats(int64_t r, int64_t s, int64_t h, int64_t p, int64_t c, int64_t layers,
                                            int64_t k) {
  return 2 * r + s + h + p + 2 * (r / c) + s / c + layers * (k - 1) * r + layers * 2 * (r / c) + 2;
}

// The weights one block of the cluster kernel holds: 1/C of the output rows of every matrix and bias.
constexpr int64_t cluster_weight_elements(int64_t r, int64_t s, int64_t h, int64_t p, int64_t layers, int64_t k,
                                          int64_t c) {
  return layers * (k * r * 2 * (r / c) + 2 * (r / c) + r * (r / c) + r / c + r * (s / c) + s / c) + s * (h / c) +
         h / c + h * (p / c) + p / c;
}

constexpr int kGenerateThreads = 256;
constexpr int64_t kMaxBatchPerBlock = 8;  // one warp samples each element: at most 8 warps of 256 threads

constexpr int64_t activation_floats(int64_t r, int64_t s, int64_t h, int64_t p) { return 4 * r + s + h + p + 1; }

constexpr int64_t weight_elements(int64_t r, int64_t s, int64_t h, int64_t p, int64_t layers, int64_t k) {
  return layers * (2 * r * r * k + 2 * r + r * r + r + s * r + s) + h * s + h + p * h + p;
}

inline CudaPlan plan_cuda(int64_t r, int64_t s, int64_t h, int64_t p, int64_t layers, int64_t k, int64_t batch,
                          int64_t element_size, bool mixture, int64_t device_shared_bytes, int64_t multiprocessors,
                          int64_t compute_capability) {
  CudaPlan plan;
  // Less the kernels' static shared memory (the previous samples).
  const int64_t max_shared_bytes = device_shared_bytes - kMaxBatchPerBlock * 8;
  if (compute_capability >= 90) {
    for (const int64_t c : kClusterSizes) {
      if (r % c || s % c || h % c || p % c) continue;
      if (batch * c > multiprocessors) break;
      const int64_t bytes = (4 * cluster_activation_floats(r, s, h, p, c, layers, k) + 15) / 16 * 16 +
                            cluster_weight_elements(r, s, h, p, layers, k, c) * element_size;
      if (bytes <= max_shared_bytes) {
        plan.cluster_size = c;
        plan.shared_bytes = bytes;
        plan.weight_bytes = weight_elements(r, s, h, p, layers, k) * element_size;
        plan.weights_in_shared = true;
        return plan;
      }
    }
  }
  const int64_t per_element = 4 * activation_floats(r, s, h, p);
  if (per_element > max_shared_bytes) {
    // Name the largest term of 4R + S + H + P: the parameter to reduce.
    const char* name = "residual_channels";
    int64_t value = r, largest = 4 * r;
    if (s > largest) name = "skip_channels", value = s, largest = s;
    if (h > largest) name = "head_channels", value = h, largest = h;
    if (p > largest) name = mixture ? "3 * mixture_components" : "num_classes", value = p, largest = p;
    plan.error = std::string("wavenet_generate (cuda): ") + name + "=" + std::to_string(value) +
                 " is too large for the persistent kernel: one batch element's activations (4R + S + H + P + 1 = " +
                 std::to_string(per_element / 4) + " floats, " + std::to_string(per_element) +
                 " bytes) must fit in the device's " + std::to_string(device_shared_bytes) +
                 " bytes of shared memory per block";
    return plan;
  }
  // As many elements per block as keep every multiprocessor busy, at most what shared memory holds.
  int64_t per_block = 1;
  while (per_block * 2 <= kMaxBatchPerBlock && batch >= per_block * 2 * multiprocessors &&
         per_block * 2 * per_element <= max_shared_bytes) {
    per_block *= 2;
  }
  plan.batch_per_block = per_block;
  plan.weight_bytes = weight_elements(r, s, h, p, layers, k) * element_size;
  const int64_t activations = per_block * per_element;
  const int64_t weights_offset = (activations + 15) / 16 * 16;
  plan.weights_in_shared = weights_offset + plan.weight_bytes <= max_shared_bytes;
  plan.shared_bytes = plan.weights_in_shared ? weights_offset + plan.weight_bytes : activations;
  return plan;
}

// Entry points of the WaveNet generation kernels, called by wavenet_generate_ops.cpp.
void generate_cpu(const Args& args);

#if defined(GMK_WITH_CUDA)
cudaError_t generate_cuda(const Args& args, cudaStream_t stream);
// How many clusters of the cluster kernel (args.cluster_size, args.shared_bytes) can be resident at once.
cudaError_t max_active_clusters_cuda(const Args& args, int* clusters);
#endif

}  // namespace gmk::wavenet_generate
