// Vector quantisation (docs/conventions.md, "Vector quantisation"): the nearest code of every position,
// searched through the codebook tile by tile with a running argmin (no positions x codes matrix), and the
// per-code counts and sums of a batch (a segment sum, no one-hot). Shared by the CPU and CUDA kernels; no
// torch header.
#pragma once
#include <cstdint>

#include "gmk/common.h"

#if defined(GMK_WITH_CUDA)
#include <cuda_runtime_api.h>
#endif

namespace gmk::vector_quantize {

// x is a contiguous (outer, dim, inner) array: element d of position p = o * inner + i sits at
// (o * dim + d) * inner + i. The codebook is a contiguous (codes, dim) array of x's dtype. Distances,
// norms, counts and sums are float32 (float64 for float64 x).
struct SearchArgs {
  int64_t outer = 0, dim = 0, inner = 0, codes = 0;
  const void* x = nullptr;
  const void* codebook = nullptr;
  void* code_norms = nullptr;  // (codes) workspace: ||c_k||^2, computed once per call
  void* quantized = nullptr;   // x's (outer, dim, inner) layout: codebook[indices], bit for bit
  int64_t* indices = nullptr;  // (outer, inner)
  void* distance = nullptr;    // (outer, inner): ||x_p - c_{index}||^2, summed over the differences
  DType dtype = DType::Float32;
};

struct StatisticsArgs {
  int64_t outer = 0, dim = 0, inner = 0, codes = 0;
  const void* x = nullptr;
  const int64_t* indices = nullptr;  // (outer, inner), each in [0, codes)
  void* counts = nullptr;            // (codes): positions per code
  void* sums = nullptr;              // (codes, dim): the sum of x over each code's positions
  // CUDA: a (codes, dim + 1) float64 workspace (each code's sums, then its count), rounded once into counts
  // and sums: float32 atomics would stop counting at 2^24 positions of one code.
  double* accumulators = nullptr;
  DType dtype = DType::Float32;
};

// The search ranks codes by ||c_k||^2 - 2 x.c_k: ||x - c_k||^2 less the position's own ||x||^2, which
// would only add a rounding shared by every code. Code k replaces the best so far only when its score is
// strictly lower, so ties go to the lowest index (as torch.argmin) and a NaN score never wins.
template <typename T>
GMK_HOST_DEVICE T score(T code_norm, T dot) {
  return code_norm - T(2) * dot;
}

// The running argmin's step over codes visited in increasing index order.
template <typename T>
GMK_HOST_DEVICE void keep_lower(T candidate, int64_t code, T& best, int64_t& best_code) {
  if (candidate < best) {
    best = candidate;
    best_code = code;
  }
}

void search_cpu(const SearchArgs& args);
void statistics_cpu(const StatisticsArgs& args);
#if defined(GMK_WITH_CUDA)
cudaError_t search_cuda(const SearchArgs& args, cudaStream_t stream);
cudaError_t statistics_cuda(const StatisticsArgs& args, cudaStream_t stream);
#endif

}  // namespace gmk::vector_quantize
