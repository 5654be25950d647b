// Entry points of the WaveNet generation kernels, called by wavenet_generate_ops.cpp.
#pragma once
#include "gmk/wavenet_generate.h"

#if defined(GMK_WITH_CUDA)
#include <cuda_runtime_api.h>
#endif

namespace gmk::wavenet_generate {

void generate_cpu(const Args& args);

#if defined(GMK_WITH_CUDA)
cudaError_t generate_cuda(const Args& args, cudaStream_t stream);
// How many clusters of the cluster kernel (args.cluster_size, args.shared_bytes) can be resident at once.
cudaError_t max_active_clusters_cuda(const Args& args, int* clusters);
#endif

}  // namespace gmk::wavenet_generate
