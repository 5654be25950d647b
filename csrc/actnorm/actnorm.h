// Entry points of the actnorm kernels, called by actnorm_ops.cpp.
#pragma once
#include "gmk/actnorm.h"

#if defined(GMK_WITH_CUDA)
#include <cuda_runtime_api.h>
#endif

namespace gmk::actnorm {

void forward_cpu(const Args& args);
void backward_cpu(const Args& args);

#if defined(GMK_WITH_CUDA)
cudaError_t forward_cuda(const Args& args, cudaStream_t stream);
cudaError_t backward_cuda(const Args& args, cudaStream_t stream);
// How many partial sums per channel backward_cuda writes (Args::parts) for these sizes.
int64_t backward_parts_cuda(int64_t outer, int64_t channels, int64_t inner);
#endif

}  // namespace gmk::actnorm
