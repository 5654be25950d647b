// CUDA kernel of the 1x1 convolution y[o, :, i] = W x[o, :, i] + b. No torch header here.
//
// The op is memory-bound for the channel counts of flows (Glow: 12 to 96): each block copies W
// (zero-padded to a multiple of kTile rows) into shared memory once, then each thread takes one
// position p = (o, i) at a time (grid-stride) and computes its outputs kTile at a time: kTile float
// accumulators, a loop over the input channels reading x[o, c, i] (coalesced along i; the re-reads
// of later tiles hit L1) and broadcasting W's column from shared memory, then kTile coalesced stores.
// DRAM traffic: x read once, y written once.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>

#include "gmk/cuda_types.cuh"
#include "gmk/invconv.h"

namespace gmk::invconv {
namespace {

constexpr int kThreads = 256;
constexpr int kTile = 16;
constexpr int64_t kSharedBytes = 48 * 1024;  // without an opt-in, every GPU gives a block this much
constexpr int64_t kMaxBlocks = 4096;         // enough to fill any GPU; fewer blocks copy W fewer times

int64_t padded_rows(int64_t out_channels) { return (out_channels + kTile - 1) / kTile * kTile; }

template <typename T>
__global__ void __launch_bounds__(kThreads) conv1x1_kernel(Args p) {
  extern __shared__ float w_shared[];  // (padded_rows, in_channels), rows >= out_channels zero
  const int64_t cin = p.in_channels, cout = p.out_channels;
  const int64_t rows = (cout + kTile - 1) / kTile * kTile;
  for (int64_t k = threadIdx.x; k < rows * cin; k += kThreads) {
    w_shared[k] = k < cout * cin ? p.weight[k] : 0.0f;
  }
  __syncthreads();
  const T* x = static_cast<const T*>(p.x);
  T* y = static_cast<T*>(p.out);
  const int64_t positions = p.outer * p.inner;
  const int64_t step = static_cast<int64_t>(gridDim.x) * kThreads;
  for (int64_t pos = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; pos < positions; pos += step) {
    const int64_t o = pos / p.inner, i = pos % p.inner;
    const T* x_pos = x + o * p.x_strides.outer + i * p.x_strides.inner;
    T* y_pos = y + o * cout * p.inner + i;
    for (int64_t row0 = 0; row0 < cout; row0 += kTile) {
      float acc[kTile];
#pragma unroll
      for (int k = 0; k < kTile; ++k) acc[k] = p.bias != nullptr && row0 + k < cout ? p.bias[row0 + k] : 0.0f;
      const float* w_tile = w_shared + row0 * cin;
      for (int64_t c = 0; c < cin; ++c) {
        const float v = to_float(x_pos[c * p.x_strides.channel]);
#pragma unroll
        for (int k = 0; k < kTile; ++k) acc[k] = fmaf(w_tile[k * cin + c], v, acc[k]);
      }
#pragma unroll
      for (int k = 0; k < kTile; ++k) {
        if (row0 + k < cout) y_pos[(row0 + k) * p.inner] = from_float<T>(acc[k]);
      }
    }
  }
}

}  // namespace

bool conv1x1_cuda_fits(int64_t in_channels, int64_t out_channels) {
  return in_channels >= 1 && padded_rows(out_channels) * in_channels * int64_t{sizeof(float)} <= kSharedBytes;
}

cudaError_t conv1x1_cuda(const Args& args, cudaStream_t stream) {
  if (!conv1x1_cuda_fits(args.in_channels, args.out_channels)) return cudaErrorInvalidValue;
  const size_t shared = static_cast<size_t>(padded_rows(args.out_channels) * args.in_channels) * sizeof(float);
  const int64_t positions = args.outer * args.inner;
  const auto blocks = static_cast<unsigned>(std::min((positions + kThreads - 1) / kThreads, kMaxBlocks));
  return with_cuda_type(args.dtype, [&](auto tag) {
    conv1x1_kernel<decltype(tag)><<<blocks, kThreads, shared, stream>>>(args);
    return cudaGetLastError();
  });
}

}  // namespace gmk::invconv
