// CUDA kernels of the coupling layer. No torch header here (see DESIGN.md): plain pointers, sizes
// and strides in, cudaError_t out.
//
// Block b of sample o owns elements [b * 2048, (b + 1) * 2048) of the sample's x_b, m = c * inner + i.
// For each element a thread reads x_a, x_b, r and t once and writes y_a = x_a and y_b once: y is
// written in full by one kernel, with no concatenation. Vector path (every tensor has unit inner
// stride, inner % 4 == 0, aligned): each thread moves 2 runs of 4 consecutive elements (16-byte
// loads for float); strided path: 8 single elements, any strides.
//
// The forward's logdet: each block sums its log s (warp shuffles, then the warps' sums, in a fixed
// order) and writes it to logdet directly when the sample has one block, else to a workspace slot;
// a second kernel then sums each sample's slots in double with one warp. No atomics: the result
// is the same on every run.
//
// Checkerboard layouts: block b of sample o owns elements m = c * inner + p of the sample's x (every
// channel holds x_a and x_b); each thread takes 8 single elements (strided path, any strides),
// transforms those of x_b and copies those of x_a.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <climits>
#include <type_traits>

#include "gmk/cuda_types.cuh"
#include "gmk/coupling.h"

namespace gmk::coupling {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int kPerThread = static_cast<int>(kCudaBlockElements / kThreads);  // 8
constexpr int kVec = 4;
static_assert(kPerThread % kVec == 0, "a thread's elements are whole vectors");

template <typename T>
struct alignas(sizeof(T) * kVec) Vec {
  T v[kVec];
};

template <typename T>
__device__ __forceinline__ void load_vec(const T* p, float (&out)[kVec]) {
  const Vec<T> loaded = *reinterpret_cast<const Vec<T>*>(p);
#pragma unroll
  for (int j = 0; j < kVec; ++j) out[j] = to_float(loaded.v[j]);
}

template <typename T>
__device__ __forceinline__ void store_vec(T* p, const float (&in)[kVec]) {
  Vec<T> packed;
#pragma unroll
  for (int j = 0; j < kVec; ++j) packed.v[j] = from_float<T>(in[j]);
  *reinterpret_cast<Vec<T>*>(p) = packed;
}

template <typename T>
__device__ __forceinline__ void copy_vec(const T* from, T* to) {
  *reinterpret_cast<Vec<T>*>(to) = *reinterpret_cast<const Vec<T>*>(from);
}

// Where element m = c * inner + i of sample o's x_b sits in each tensor (offsets in elements).
struct Offsets {
  int64_t x_a, x_b, r, t;  // inputs, with their strides
  int64_t out_a, out_b;    // y or grad_x, contiguous (outer, 2 * half, inner)
  int64_t grad_r, grad_t;  // grad_h, contiguous (outer, h_channels, inner)
};

__device__ __forceinline__ Offsets offsets_of(const Args& p, int64_t o, int64_t m) {
  int64_t c, i;
  if (p.half * p.inner <= INT32_MAX) {  // 32-bit division is several times cheaper than 64-bit
    const uint32_t c32 = static_cast<uint32_t>(m) / static_cast<uint32_t>(p.inner);
    c = c32;
    i = static_cast<uint32_t>(m) - c32 * static_cast<uint32_t>(p.inner);
  } else {
    c = m / p.inner;
    i = m - c * p.inner;
  }
  const int64_t r_c = r_channel(p.layout, p.half, c);
  const int64_t t_c = t_channel(p.transform, p.layout, p.half, c);
  const int64_t h_channels = p.transform == Transform::Additive ? p.half : 2 * p.half;
  const Strides3& xs = p.x_strides;
  const Strides3& hs = p.h_strides;
  Offsets f;
  f.x_a = o * xs.outer + c * xs.channel + i * xs.inner;
  f.x_b = f.x_a + p.half * xs.channel;
  f.r = o * hs.outer + r_c * hs.channel + i * hs.inner;
  f.t = o * hs.outer + t_c * hs.channel + i * hs.inner;
  f.out_a = (o * 2 * p.half + c) * p.inner + i;
  f.out_b = f.out_a + p.half * p.inner;
  f.grad_r = (o * h_channels + r_c) * p.inner + i;
  f.grad_t = (o * h_channels + t_c) * p.inner + i;
  return f;
}

// The sum of v over the block, in thread 0 (every thread must call it).
__device__ __forceinline__ float block_sum(float v) {
  __shared__ float warp_sums[kWarps];
#pragma unroll
  for (int offset = 16; offset > 0; offset /= 2) v += __shfl_down_sync(0xffffffffu, v, offset);
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  if (lane == 0) warp_sums[warp] = v;
  __syncthreads();
  v = 0.0f;
  if (warp == 0) {
    v = lane < kWarps ? warp_sums[lane] : 0.0f;
#pragma unroll
    for (int offset = 16; offset > 0; offset /= 2) v += __shfl_down_sync(0xffffffffu, v, offset);
  }
  return v;
}

// The element index of a thread's k-th vector (vector path) or k-th element (strided path).
template <bool kVector>
__device__ __forceinline__ int64_t element_of(int64_t block_start, int k) {
  return kVector ? block_start + (static_cast<int64_t>(k) * kThreads + threadIdx.x) * kVec
                 : block_start + static_cast<int64_t>(k) * kThreads + threadIdx.x;
}

template <typename T, Transform kTransform, bool kReverse, bool kVector>
__global__ void __launch_bounds__(kThreads) forward_kernel(const Args p, int64_t blocks_per_sample) {
  constexpr int kWidth = kVector ? kVec : 1;
  constexpr bool kAdditive = kTransform == Transform::Additive;
  const int64_t o = blockIdx.x / blocks_per_sample;
  const int64_t block_start = (blockIdx.x - o * blocks_per_sample) * kCudaBlockElements;
  const int64_t len = p.half * p.inner;
  const T* x = static_cast<const T*>(p.x);
  const T* h = static_cast<const T*>(p.h);
  T* y = static_cast<T*>(p.out);
  float log_sum = 0.0f;
#pragma unroll
  for (int k = 0; k < kPerThread / kWidth; ++k) {
    const int64_t m = element_of<kVector>(block_start, k);
    if (m >= len) break;  // len % kWidth == 0 on the vector path
    const Offsets f = offsets_of(p, o, m);
    float z[kVec], r[kVec] = {}, t[kVec];
    if constexpr (kVector) {
      copy_vec(x + f.x_a, y + f.out_a);
      load_vec(x + f.x_b, z);
      if constexpr (!kAdditive) load_vec(h + f.r, r);
      load_vec(h + f.t, t);
    } else {
      y[f.out_a] = x[f.x_a];
      z[0] = to_float(x[f.x_b]);
      if constexpr (!kAdditive) r[0] = to_float(h[f.r]);
      t[0] = to_float(h[f.t]);
    }
#pragma unroll
    for (int j = 0; j < kWidth; ++j) {
      float log_s;
      z[j] = apply<kTransform, kReverse>(z[j], r[j], t[j], log_s);
      log_sum += log_s;
    }
    if constexpr (kVector) {
      store_vec(y + f.out_b, z);
    } else {
      y[f.out_b] = from_float<T>(z[0]);
    }
  }
  if constexpr (!kAdditive) {
    const float sum = block_sum(log_sum);
    if (threadIdx.x == 0) {
      if (blocks_per_sample == 1) {
        static_cast<float*>(p.logdet)[o] = kReverse ? -sum : sum;
      } else {
        static_cast<float*>(p.workspace)[blockIdx.x] = sum;
      }
    }
  }
}

// logdet[o] = ±(sum of sample o's block sums), one warp per sample, in double.
__global__ void __launch_bounds__(kThreads) sum_blocks_kernel(const float* block_sums, int64_t blocks_per_sample,
                                                              int64_t outer, bool negate, float* logdet) {
  const int64_t o = static_cast<int64_t>(blockIdx.x) * kWarps + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (o >= outer) return;  // o is the same across a warp: whole warps leave
  double sum = 0.0;
  for (int64_t b = lane; b < blocks_per_sample; b += 32) sum += block_sums[o * blocks_per_sample + b];
#pragma unroll
  for (int offset = 16; offset > 0; offset /= 2) sum += __shfl_down_sync(0xffffffffu, sum, offset);
  if (lane == 0) logdet[o] = static_cast<float>(negate ? -sum : sum);
}

template <typename T, Transform kTransform, bool kReverse, bool kVector>
__global__ void __launch_bounds__(kThreads) backward_kernel(const Args p, int64_t blocks_per_sample) {
  constexpr int kWidth = kVector ? kVec : 1;
  constexpr bool kAdditive = kTransform == Transform::Additive;
  const int64_t o = blockIdx.x / blocks_per_sample;
  const int64_t block_start = (blockIdx.x - o * blocks_per_sample) * kCudaBlockElements;
  const int64_t len = p.half * p.inner;
  const T* x = static_cast<const T*>(p.x);
  const T* h = static_cast<const T*>(p.h);
  const T* grad_y = static_cast<const T*>(p.grad_y);
  T* grad_x = static_cast<T*>(p.out);
  T* grad_h = static_cast<T*>(p.grad_h);
  const float grad_logdet = static_cast<const float*>(p.grad_logdet)[o];
#pragma unroll
  for (int k = 0; k < kPerThread / kWidth; ++k) {
    const int64_t m = element_of<kVector>(block_start, k);
    if (m >= len) break;
    const Offsets f = offsets_of(p, o, m);
    float z[kVec], r[kVec] = {}, t[kVec], g[kVec], grad_z[kVec], grad_r[kVec], grad_t[kVec];
    if constexpr (kVector) {
      copy_vec(grad_y + f.out_a, grad_x + f.out_a);  // x_a passes through
      load_vec(grad_y + f.out_b, g);
      load_vec(x + f.x_b, z);
      if constexpr (!kAdditive) load_vec(h + f.r, r);
      load_vec(h + f.t, t);
    } else {
      grad_x[f.out_a] = grad_y[f.out_a];
      g[0] = to_float(grad_y[f.out_b]);
      z[0] = to_float(x[f.x_b]);
      if constexpr (!kAdditive) r[0] = to_float(h[f.r]);
      t[0] = to_float(h[f.t]);
    }
#pragma unroll
    for (int j = 0; j < kWidth; ++j) {
      backward<kTransform, kReverse>(z[j], r[j], t[j], g[j], grad_logdet, grad_z[j], grad_r[j], grad_t[j]);
    }
    if constexpr (kVector) {
      store_vec(grad_x + f.out_b, grad_z);
      if constexpr (!kAdditive) store_vec(grad_h + f.grad_r, grad_r);
      store_vec(grad_h + f.grad_t, grad_t);
    } else {
      grad_x[f.out_b] = from_float<T>(grad_z[0]);
      if constexpr (!kAdditive) grad_h[f.grad_r] = from_float<T>(grad_r[0]);
      grad_h[f.grad_t] = from_float<T>(grad_t[0]);
    }
  }
}

template <typename T, Transform kTransform, bool kReverse>
__global__ void __launch_bounds__(kThreads) checkerboard_forward_kernel(const Args p, int64_t blocks_per_sample) {
  constexpr bool kAdditive = kTransform == Transform::Additive;
  const int64_t o = blockIdx.x / blocks_per_sample;
  const int64_t block_start = (blockIdx.x - o * blocks_per_sample) * kCudaBlockElements;
  const int64_t len = p.half * p.inner;
  const T* x = static_cast<const T*>(p.x);
  const T* h = static_cast<const T*>(p.h);
  T* y = static_cast<T*>(p.out);
  const Strides3& xs = p.x_strides;
  const Strides3& hs = p.h_strides;
  float log_sum = 0.0f;
#pragma unroll
  for (int k = 0; k < kPerThread; ++k) {
    const int64_t m = element_of<false>(block_start, k);
    if (m >= len) break;
    const int64_t c = m / p.inner, i = m - c * p.inner;
    const T x_value = x[o * xs.outer + c * xs.channel + i * xs.inner];
    if (!checkerboard_b(p.layout, p.width, i)) {
      y[o * len + m] = x_value;  // x_a
      continue;
    }
    const int64_t r_offset = o * hs.outer + c * hs.channel + i * hs.inner;
    const float t = to_float(h[kAdditive ? r_offset : r_offset + p.half * hs.channel]);
    const float r = kAdditive ? 0.0f : to_float(h[r_offset]);
    float log_s;
    y[o * len + m] = from_float<T>(apply<kTransform, kReverse>(to_float(x_value), r, t, log_s));
    log_sum += log_s;
  }
  if constexpr (!kAdditive) {
    const float sum = block_sum(log_sum);
    if (threadIdx.x == 0) {
      if (blocks_per_sample == 1) {
        static_cast<float*>(p.logdet)[o] = kReverse ? -sum : sum;
      } else {
        static_cast<float*>(p.workspace)[blockIdx.x] = sum;
      }
    }
  }
}

template <typename T, Transform kTransform, bool kReverse>
__global__ void __launch_bounds__(kThreads) checkerboard_backward_kernel(const Args p, int64_t blocks_per_sample) {
  constexpr bool kAdditive = kTransform == Transform::Additive;
  const int64_t o = blockIdx.x / blocks_per_sample;
  const int64_t block_start = (blockIdx.x - o * blocks_per_sample) * kCudaBlockElements;
  const int64_t len = p.half * p.inner;
  const T* x = static_cast<const T*>(p.x);
  const T* h = static_cast<const T*>(p.h);
  const T* grad_y = static_cast<const T*>(p.grad_y);
  T* grad_x = static_cast<T*>(p.out);
  T* grad_h = static_cast<T*>(p.grad_h);
  const Strides3& xs = p.x_strides;
  const Strides3& hs = p.h_strides;
  const float grad_logdet = static_cast<const float*>(p.grad_logdet)[o];
  // grad_h is contiguous (outer, 2 * half or half, inner): r's rows, then t's.
  T* grad_r = grad_h + o * (kAdditive ? 1 : 2) * len;
  T* grad_t = kAdditive ? grad_r : grad_r + len;
#pragma unroll
  for (int k = 0; k < kPerThread; ++k) {
    const int64_t m = element_of<false>(block_start, k);
    if (m >= len) break;
    const int64_t c = m / p.inner, i = m - c * p.inner;
    if (!checkerboard_b(p.layout, p.width, i)) {
      grad_x[o * len + m] = grad_y[o * len + m];  // x_a passes through
      if constexpr (!kAdditive) grad_r[m] = from_float<T>(0.0f);
      grad_t[m] = from_float<T>(0.0f);
      continue;
    }
    const int64_t r_offset = o * hs.outer + c * hs.channel + i * hs.inner;
    const float z = to_float(x[o * xs.outer + c * xs.channel + i * xs.inner]);
    const float t = to_float(h[kAdditive ? r_offset : r_offset + p.half * hs.channel]);
    const float r = kAdditive ? 0.0f : to_float(h[r_offset]);
    float gz, gr, gt;
    backward<kTransform, kReverse>(z, r, t, to_float(grad_y[o * len + m]), grad_logdet, gz, gr, gt);
    grad_x[o * len + m] = from_float<T>(gz);
    if constexpr (!kAdditive) grad_r[m] = from_float<T>(gr);
    grad_t[m] = from_float<T>(gt);
  }
}

template <typename T>
bool aligned(const void* ptr) {
  return reinterpret_cast<uintptr_t>(ptr) % (sizeof(T) * kVec) == 0;
}

bool vector_strides(const Strides3& s) {
  return s.inner == 1 && s.channel % kVec == 0 && s.outer % kVec == 0;
}

// Every tensor read with unit inner stride and 4-element alignment, inner a multiple of 4 (so a
// thread's 4 elements share a channel); the outputs are fresh contiguous tensors.
template <typename T>
bool vector_path(const Args& p) {
  return p.inner % kVec == 0 && vector_strides(p.x_strides) && vector_strides(p.h_strides) && aligned<T>(p.x) &&
         aligned<T>(p.h) && aligned<T>(p.out) && (!p.grad_y || aligned<T>(p.grad_y)) &&
         (!p.grad_h || aligned<T>(p.grad_h));
}

template <typename T, Transform kTransform, bool kReverse>
cudaError_t launch_typed(const Args& p, bool backward_pass, cudaStream_t stream) {
  const int64_t blocks_per_sample = cuda_blocks_per_sample(p);
  const int64_t blocks = p.outer * blocks_per_sample;
  if (blocks == 0) return cudaSuccess;
  if (blocks > INT32_MAX) return cudaErrorInvalidConfiguration;
  const bool vector = !is_checkerboard(p.layout) && vector_path<T>(p);
  const dim3 grid(static_cast<unsigned>(blocks));
  if (is_checkerboard(p.layout)) {
    if (backward_pass) {
      checkerboard_backward_kernel<T, kTransform, kReverse><<<grid, kThreads, 0, stream>>>(p, blocks_per_sample);
      return cudaGetLastError();
    }
    checkerboard_forward_kernel<T, kTransform, kReverse><<<grid, kThreads, 0, stream>>>(p, blocks_per_sample);
  } else if (backward_pass) {
    if (vector) backward_kernel<T, kTransform, kReverse, true><<<grid, kThreads, 0, stream>>>(p, blocks_per_sample);
    else backward_kernel<T, kTransform, kReverse, false><<<grid, kThreads, 0, stream>>>(p, blocks_per_sample);
    return cudaGetLastError();
  } else if (vector) {
    forward_kernel<T, kTransform, kReverse, true><<<grid, kThreads, 0, stream>>>(p, blocks_per_sample);
  } else {
    forward_kernel<T, kTransform, kReverse, false><<<grid, kThreads, 0, stream>>>(p, blocks_per_sample);
  }
  cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess || kTransform == Transform::Additive || blocks_per_sample == 1) return err;
  const dim3 sum_grid(static_cast<unsigned>((p.outer + kWarps - 1) / kWarps));
  sum_blocks_kernel<<<sum_grid, kThreads, 0, stream>>>(static_cast<const float*>(p.workspace), blocks_per_sample,
                                                       p.outer, kReverse, static_cast<float*>(p.logdet));
  return cudaGetLastError();
}

template <Transform kTransform, bool kReverse>
cudaError_t launch_transform(const Args& p, bool backward_pass, cudaStream_t stream) {
  return with_cuda_type(p.dtype, [&](auto tag) {
    return launch_typed<decltype(tag), kTransform, kReverse>(p, backward_pass, stream);
  });
}

cudaError_t launch(const Args& p, bool backward_pass, cudaStream_t stream) {
  switch (p.transform) {
    case Transform::Glow:
      return p.reverse ? launch_transform<Transform::Glow, true>(p, backward_pass, stream)
                       : launch_transform<Transform::Glow, false>(p, backward_pass, stream);
    case Transform::RealNVP:
      return p.reverse ? launch_transform<Transform::RealNVP, true>(p, backward_pass, stream)
                       : launch_transform<Transform::RealNVP, false>(p, backward_pass, stream);
    case Transform::Additive:
      return p.reverse ? launch_transform<Transform::Additive, true>(p, backward_pass, stream)
                       : launch_transform<Transform::Additive, false>(p, backward_pass, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace

cudaError_t forward_cuda(const Args& args, cudaStream_t stream) { return launch(args, false, stream); }
cudaError_t backward_cuda(const Args& args, cudaStream_t stream) { return launch(args, true, stream); }

}  // namespace gmk::coupling
