// Entry points of the coupling kernels, called by coupling_ops.cpp.
#pragma once
#include "gmk/coupling.h"

#if defined(GMK_WITH_CUDA)
#include <cuda_runtime_api.h>
#endif

namespace gmk::coupling {

// The CUDA kernels give each block kCudaBlockElements elements of one sample's x_b; the forward
// writes one partial sum of log s per block into args.workspace (floats) when a sample spans more
// than one block, then sums them per sample in a fixed order (deterministic).
constexpr int64_t kCudaBlockElements = 2048;

inline int64_t cuda_blocks_per_sample(const Args& args) {
  return (args.half * args.inner + kCudaBlockElements - 1) / kCudaBlockElements;
}

// Floats of workspace the CUDA forward needs (0: none).
inline int64_t cuda_workspace_floats(const Args& args) {
  const int64_t blocks = cuda_blocks_per_sample(args);
  return args.transform == Transform::Additive || blocks <= 1 ? 0 : args.outer * blocks;
}

void forward_cpu(const Args& args);
void backward_cpu(const Args& args);

#if defined(GMK_WITH_CUDA)
cudaError_t forward_cuda(const Args& args, cudaStream_t stream);
cudaError_t backward_cuda(const Args& args, cudaStream_t stream);
#endif

}  // namespace gmk::coupling
