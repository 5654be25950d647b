// CUDA kernel of cached_conv2d (gmk/cached_conv.h). Block (n·count + t, o-block): the window of sample n,
// output column t is gathered into shared memory in tiles of kTile taps; each of the 8 warps owns 8 output
// channels, its lanes accumulate strided taps (weight rows read coalesced) and reduce by shuffles at the end.
// No torch header here.
#include "gmk/cached_conv.h"
#include "gmk/cuda_types.cuh"

namespace gmk::cached_conv {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int kOutPerWarp = 8;
constexpr int kOutPerBlock = kWarps * kOutPerWarp;
constexpr int kTile = 2048;  // taps per shared-memory tile (8 KB)

template <typename T>
__global__ void __launch_bounds__(kThreads) cached_conv_kernel(const Args args) {
  __shared__ float window[kTile];
  const int64_t pair = blockIdx.x;
  const int64_t n = pair / args.count, t = pair % args.count;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t first_out = static_cast<int64_t>(blockIdx.y) * kOutPerBlock + warp * kOutPerWarp;
  const int64_t taps = args.taps();
  const T* rows = static_cast<const T*>(args.rows);
  const T* weight = static_cast<const T*>(args.weight);
  float acc[kOutPerWarp] = {};
  for (int64_t k0 = 0; k0 < taps; k0 += kTile) {
    const int64_t tile = taps - k0 < kTile ? taps - k0 : kTile;
    for (int64_t k = threadIdx.x; k < tile; k += kThreads) window[k] = to_float(rows[args.offset(n, t, k0 + k)]);
    __syncthreads();
#pragma unroll
    for (int i = 0; i < kOutPerWarp; ++i) {
      const int64_t o = first_out + i;
      if (o < args.out_channels) {
        const T* w = weight + o * taps + k0;
        for (int64_t k = lane; k < tile; k += 32) acc[i] += to_float(w[k]) * window[k];
      }
    }
    __syncthreads();
  }
  T* out = static_cast<T*>(args.out);
  const T* bias = static_cast<const T*>(args.bias);
#pragma unroll
  for (int i = 0; i < kOutPerWarp; ++i) {
    float sum = acc[i];
    for (int offset = 16; offset > 0; offset /= 2) sum += __shfl_down_sync(0xffffffffu, sum, offset);
    const int64_t o = first_out + i;
    if (lane == 0 && o < args.out_channels) {
      if (bias != nullptr) sum += to_float(bias[o]);
      out[(n * args.out_channels + o) * args.count + t] = from_float<T>(sum);
    }
  }
}

}  // namespace

cudaError_t run_cuda(const Args& args, cudaStream_t stream) {
  const int64_t pairs = args.batch * args.count;
  const int64_t out_blocks = (args.out_channels + kOutPerBlock - 1) / kOutPerBlock;
  if (pairs > 0x7fffffff || out_blocks > 65535) return cudaErrorInvalidConfiguration;
  const dim3 grid(static_cast<unsigned>(pairs), static_cast<unsigned>(out_blocks));
  return with_cuda_type(args.dtype, [&](auto tag) {
    cached_conv_kernel<decltype(tag)><<<grid, kThreads, 0, stream>>>(args);
    return cudaGetLastError();
  });
}

}  // namespace gmk::cached_conv
