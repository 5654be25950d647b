// Entry points of the gated-activation kernels, called by gated_ops.cpp.
#pragma once
#include "gmk/gated.h"

#if defined(GMK_WITH_CUDA)
#include <cuda_runtime_api.h>
#endif

namespace gmk::gated {

void forward_cpu(const Args& args);
void backward_cpu(const Args& args);

#if defined(GMK_WITH_CUDA)
cudaError_t forward_cuda(const Args& args, cudaStream_t stream);
cudaError_t backward_cuda(const Args& args, cudaStream_t stream);
#endif

}  // namespace gmk::gated
