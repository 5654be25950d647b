// CUDA kernels of actnorm. No torch header here (see DESIGN.md).
//
// Forward: one thread per output element, grid-stride, out contiguous. Backward: block b works on
// channel b / parts and the part b % parts of that channel's outer * inner elements: it writes the
// gradient of in there and one partial sum of grad_out and of grad_out * in per block (summed by
// the caller), so the sums are deterministic and need no atomics.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <cstdint>

#include "gmk/cuda_types.cuh"
#include "gmk/actnorm.h"

namespace gmk::actnorm {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxBlocks = 65536;
// Elements of one channel per backward block: (64, 48, 32, 32) makes 1536 blocks, enough to fill a GPU.
constexpr int64_t kElementsPerPart = 2048;

// Index: uint32_t where every element and offset fits in 31 bits (integer division is several
// times cheaper than in 64 bits), int64_t otherwise.
template <typename T, typename Index>
__global__ void __launch_bounds__(kThreads) forward_kernel(Args p) {
  const T* in = static_cast<const T*>(p.in);
  const float* bias = static_cast<const float*>(p.bias);
  const float* log_scale = static_cast<const float*>(p.log_scale);
  T* out = static_cast<T*>(p.out);
  const Index inner = static_cast<Index>(p.inner), channels = static_cast<Index>(p.channels);
  const Index total = static_cast<Index>(p.outer) * channels * inner;
  const Index step = static_cast<Index>(gridDim.x) * blockDim.x;
  for (Index e = static_cast<Index>(blockIdx.x) * blockDim.x + threadIdx.x; e < total; e += step) {
    const Index i = e % inner, row = e / inner;
    const Index c = row % channels, o = row / channels;
    const Affine<float> f = affine(bias[c], log_scale[c], p.reverse);
    const Index offset = o * static_cast<Index>(p.in_strides.outer) + c * static_cast<Index>(p.in_strides.channel) +
                         i * static_cast<Index>(p.in_strides.inner);
    out[e] = from_float<T>(f(to_float(in[offset])));
  }
}

__device__ __forceinline__ float block_sum(float v, float* shared) {
  for (int offset = 16; offset > 0; offset /= 2) v += __shfl_down_sync(0xffffffffu, v, offset);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  __syncthreads();  // shared may still be read by the previous call
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  v = threadIdx.x < kThreads / 32 ? shared[threadIdx.x] : 0.0f;
  if (warp == 0) {
    for (int offset = 16; offset > 0; offset /= 2) v += __shfl_down_sync(0xffffffffu, v, offset);
  }
  return v;  // the sum, in thread 0
}

template <typename T, typename Index>
__global__ void __launch_bounds__(kThreads) backward_kernel(Args p) {
  __shared__ float shared[kThreads / 32];
  const T* in = static_cast<const T*>(p.in);
  const T* grad_out = static_cast<const T*>(p.grad_out);
  T* grad_in = static_cast<T*>(p.out);
  const Index parts = static_cast<Index>(p.parts), inner = static_cast<Index>(p.inner);
  const Index channels = static_cast<Index>(p.channels);
  const Index c = blockIdx.x / parts, part = blockIdx.x % parts;
  const float scale =
      affine(static_cast<const float*>(p.bias)[c], static_cast<const float*>(p.log_scale)[c], p.reverse).scale;
  const Index count = static_cast<Index>(p.outer) * inner;
  const Index per_part = (count + parts - 1) / parts;
  const Index begin = part * per_part, end = begin + per_part < count ? begin + per_part : count;
  const T* in_channel = in + c * static_cast<Index>(p.in_strides.channel);
  float gsum = 0.0f, hsum = 0.0f;
  for (Index e = begin + threadIdx.x; e < end; e += kThreads) {
    const Index o = e / inner, i = e % inner;
    const Index dense = (o * channels + c) * inner + i;
    const float g = to_float(grad_out[dense]);
    const float v = to_float(
        in_channel[o * static_cast<Index>(p.in_strides.outer) + i * static_cast<Index>(p.in_strides.inner)]);
    gsum += g;
    hsum += g * v;
    grad_in[dense] = from_float<T>(g * scale);
  }
  gsum = block_sum(gsum, shared);
  hsum = block_sum(hsum, shared);
  if (threadIdx.x == 0) {
    float* sums = static_cast<float*>(p.sums) + 2 * static_cast<int64_t>(blockIdx.x);  // (c, part) = blockIdx.x
    sums[0] = gsum;
    sums[1] = hsum;
  }
}

// Whether every element index and every offset into in fits in 31 bits (strides are never negative).
bool fits_32_bits(const Args& p) {
  constexpr int64_t kLimit = int64_t{1} << 31;
  const int64_t total = p.outer * p.channels * p.inner;
  const int64_t last = (p.outer - 1) * p.in_strides.outer + (p.channels - 1) * p.in_strides.channel +
                       (p.inner - 1) * p.in_strides.inner;
  return total < kLimit && last < kLimit;
}

}  // namespace

int64_t backward_parts_cuda(int64_t outer, int64_t channels, int64_t inner) {
  const int64_t by_size = std::max<int64_t>(1, (outer * inner + kElementsPerPart - 1) / kElementsPerPart);
  return std::max<int64_t>(1, std::min(by_size, kMaxBlocks / std::max<int64_t>(channels, 1)));
}

cudaError_t forward_cuda(const Args& args, cudaStream_t stream) {
  const int64_t total = args.outer * args.channels * args.inner;
  const auto blocks = static_cast<unsigned>(std::min((total + kThreads - 1) / kThreads, kMaxBlocks));
  const bool narrow = fits_32_bits(args);
  return with_cuda_type(args.dtype, [&](auto tag) {
    using T = decltype(tag);
    if (narrow) {
      forward_kernel<T, uint32_t><<<blocks, kThreads, 0, stream>>>(args);
    } else {
      forward_kernel<T, int64_t><<<blocks, kThreads, 0, stream>>>(args);
    }
    return cudaGetLastError();
  });
}

cudaError_t backward_cuda(const Args& args, cudaStream_t stream) {
  const int64_t blocks = args.channels * args.parts;
  if (blocks > 0x7fffffff) return cudaErrorInvalidConfiguration;
  const bool narrow = fits_32_bits(args);
  return with_cuda_type(args.dtype, [&](auto tag) {
    using T = decltype(tag);
    if (narrow) {
      backward_kernel<T, uint32_t><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(args);
    } else {
      backward_kernel<T, int64_t><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(args);
    }
    return cudaGetLastError();
  });
}

}  // namespace gmk::actnorm
