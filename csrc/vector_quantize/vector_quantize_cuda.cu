// CUDA kernels of vector_quantize (gmk/vector_quantize.h). No torch header here.
// Search: one thread per position, kThreads positions per block; the block walks the codebook in tiles of
// kTileCodes codes x kTileDim dimensions staged in shared memory (as float), each thread accumulating its
// dot products with the tile's codes in registers, then a running argmin over the tile. Nothing of size
// positions x codes is ever stored. Statistics: one thread per element of x, atomics into counts and sums.
#include <cmath>

#include "gmk/cuda_types.cuh"
#include "gmk/vector_quantize.h"

namespace gmk::vector_quantize {
namespace {

constexpr int kThreads = 128;
constexpr int kTileCodes = 32;
constexpr int kTileDim = 32;
constexpr int kFillThreads = 256;

template <typename T>
__global__ void __launch_bounds__(kFillThreads) norms_kernel(const SearchArgs a) {
  const int64_t k = static_cast<int64_t>(blockIdx.x) * kFillThreads + threadIdx.x;
  if (k >= a.codes) return;
  const T* code = static_cast<const T*>(a.codebook) + k * a.dim;
  float norm = 0.0f;
  for (int64_t d = 0; d < a.dim; ++d) {
    const float c = to_float(code[d]);
    norm += c * c;
  }
  static_cast<float*>(a.code_norms)[k] = norm;
}

template <typename T>
__global__ void __launch_bounds__(kThreads) search_kernel(const SearchArgs a) {
  __shared__ float tile[kTileDim][kTileCodes + 1];  // tile[e][j]: dimension d0 + e of code k0 + j
  const int64_t positions = a.outer * a.inner;
  const int64_t p = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  const bool active = p < positions;
  const int64_t base = active ? (p / a.inner) * a.dim * a.inner + p % a.inner : 0;
  const T* x = static_cast<const T*>(a.x);
  const T* codebook = static_cast<const T*>(a.codebook);
  const float* norms = static_cast<const float*>(a.code_norms);
  float best = INFINITY;
  int64_t best_code = 0;
  for (int64_t k0 = 0; k0 < a.codes; k0 += kTileCodes) {
    float dots[kTileCodes];
#pragma unroll
    for (int j = 0; j < kTileCodes; ++j) dots[j] = 0.0f;
    for (int64_t d0 = 0; d0 < a.dim; d0 += kTileDim) {
      __syncthreads();  // the previous tile has been read
      for (int t = threadIdx.x; t < kTileDim * kTileCodes; t += kThreads) {
        const int j = t / kTileDim, e = t % kTileDim;  // neighbouring threads read neighbouring dimensions
        const int64_t k = k0 + j, d = d0 + e;
        tile[e][j] = k < a.codes && d < a.dim ? to_float(codebook[k * a.dim + d]) : 0.0f;
      }
      __syncthreads();
      const int64_t dims = a.dim - d0 < kTileDim ? a.dim - d0 : kTileDim;
      for (int e = 0; e < dims; ++e) {
        const float v = active ? to_float(x[base + (d0 + e) * a.inner]) : 0.0f;
#pragma unroll
        for (int j = 0; j < kTileCodes; ++j) dots[j] += v * tile[e][j];
      }
    }
#pragma unroll
    for (int j = 0; j < kTileCodes; ++j) {
      if (k0 + j < a.codes) keep_lower(score(norms[k0 + j], dots[j]), k0 + j, best, best_code);
    }
  }
  if (!active) return;
  float distance = 0.0f;
  for (int64_t d = 0; d < a.dim; ++d) {
    const T c = codebook[best_code * a.dim + d];
    static_cast<T*>(a.quantized)[base + d * a.inner] = c;
    const float difference = to_float(x[base + d * a.inner]) - to_float(c);
    distance += difference * difference;
  }
  a.indices[p] = best_code;
  static_cast<float*>(a.distance)[p] = distance;
}

__global__ void __launch_bounds__(kFillThreads) zero_kernel(double* out, int64_t n) {
  const int64_t m = static_cast<int64_t>(blockIdx.x) * kFillThreads + threadIdx.x;
  if (m < n) out[m] = 0.0;
}

// Element m of x in its (outer, dim, inner) layout adds to code k's accumulator d, and its d == 0 element
// counts the position (accumulator dim). float64 atomics: a count is exact up to 2^53. An index out of
// [0, codes), which the public function refuses, is skipped (no write out of bounds).
template <typename T>
__global__ void __launch_bounds__(kFillThreads) statistics_kernel(const StatisticsArgs a) {
  const int64_t m = static_cast<int64_t>(blockIdx.x) * kFillThreads + threadIdx.x;
  if (m >= a.outer * a.dim * a.inner) return;
  const int64_t i = m % a.inner, d = (m / a.inner) % a.dim, o = m / (a.inner * a.dim);
  const int64_t k = a.indices[o * a.inner + i];
  if (k < 0 || k >= a.codes) return;
  double* code = a.accumulators + k * (a.dim + 1);
  atomicAdd(code + d, static_cast<double>(to_float(static_cast<const T*>(a.x)[m])));
  if (d == 0) atomicAdd(code + a.dim, 1.0);
}

// Accumulator m of code k = m / (dim + 1) rounded once into sums[k][d] (d < dim) or counts[k] (d = dim).
__global__ void __launch_bounds__(kFillThreads) round_statistics_kernel(const StatisticsArgs a) {
  const int64_t m = static_cast<int64_t>(blockIdx.x) * kFillThreads + threadIdx.x;
  if (m >= a.codes * (a.dim + 1)) return;
  const int64_t k = m / (a.dim + 1), d = m - k * (a.dim + 1);
  const float value = static_cast<float>(a.accumulators[m]);
  if (d == a.dim) {
    static_cast<float*>(a.counts)[k] = value;
  } else {
    static_cast<float*>(a.sums)[k * a.dim + d] = value;
  }
}

cudaError_t blocks_for(int64_t n, int threads, unsigned& blocks) {
  const int64_t count = (n + threads - 1) / threads;
  if (count > 0x7fffffff) return cudaErrorInvalidConfiguration;
  blocks = static_cast<unsigned>(count);
  return cudaSuccess;
}

cudaError_t zero(double* out, int64_t n, cudaStream_t stream) {
  unsigned blocks = 0;
  if (n == 0) return cudaSuccess;
  if (const cudaError_t err = blocks_for(n, kFillThreads, blocks); err != cudaSuccess) return err;
  zero_kernel<<<blocks, kFillThreads, 0, stream>>>(out, n);
  return cudaGetLastError();
}

}  // namespace

cudaError_t search_cuda(const SearchArgs& args, cudaStream_t stream) {
  return with_cuda_type(args.dtype, [&](auto tag) {
    using T = decltype(tag);
    unsigned code_blocks = 0, position_blocks = 0;
    if (cudaError_t err = blocks_for(args.codes, kFillThreads, code_blocks); err != cudaSuccess) return err;
    if (cudaError_t err = blocks_for(args.outer * args.inner, kThreads, position_blocks); err != cudaSuccess) {
      return err;
    }
    norms_kernel<T><<<code_blocks, kFillThreads, 0, stream>>>(args);
    if (cudaError_t err = cudaGetLastError(); err != cudaSuccess) return err;
    search_kernel<T><<<position_blocks, kThreads, 0, stream>>>(args);
    return cudaGetLastError();
  });
}

cudaError_t statistics_cuda(const StatisticsArgs& args, cudaStream_t stream) {
  return with_cuda_type(args.dtype, [&](auto tag) {
    using T = decltype(tag);
    const int64_t accumulators = args.codes * (args.dim + 1), elements = args.outer * args.dim * args.inner;
    if (args.accumulators == nullptr) return cudaErrorInvalidValue;
    if (cudaError_t err = zero(args.accumulators, accumulators, stream); err != cudaSuccess) return err;
    unsigned blocks = 0;
    if (elements > 0) {
      if (cudaError_t err = blocks_for(elements, kFillThreads, blocks); err != cudaSuccess) return err;
      statistics_kernel<T><<<blocks, kFillThreads, 0, stream>>>(args);
      if (cudaError_t err = cudaGetLastError(); err != cudaSuccess) return err;
    }
    if (cudaError_t err = blocks_for(accumulators, kFillThreads, blocks); err != cudaSuccess) return err;
    round_statistics_kernel<<<blocks, kFillThreads, 0, stream>>>(args);
    return cudaGetLastError();
  });
}

}  // namespace gmk::vector_quantize
