// CUDA kernels of the discretized logistic mixture. No torch header here (see DESIGN.md): plain
// pointers, sizes and strides in, cudaError_t out. One thread per position (n, s), consecutive
// threads on consecutive s (coalesced when the positions are the innermost dimension); each thread
// loops over the K components and C channels in registers, running the per-position code of
// gmk/logistic_mixture.h on CUDA's elementary functions (gmk::LibMath), whose steps the CPU kernels
// run too. The backward recomputes the forward: pass 1 gives log p, pass 2 the responsibilities and
// the gradient.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "gmk/cuda_types.cuh"
#include "gmk/logistic_mixture.h"

namespace gmk::logistic_mixture {
namespace {

constexpr int kThreads = 128;

template <Op kOp, int kChannels, typename Param>
__global__ void __launch_bounds__(kThreads) position_kernel(const Args args) {
  const int64_t position = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (position >= args.batch * args.positions) return;
  run_position<kOp, kChannels, Param, float>(args, position);
}

// Parameters in their own type, the math in float.
template <Op kOp>
cudaError_t launch(const Args& args, cudaStream_t stream) {
  const int64_t positions = args.batch * args.positions;
  if (positions == 0) return cudaSuccess;
  const dim3 grid((positions + kThreads - 1) / kThreads);
  return with_cuda_type(args.dtype, [&](auto param_tag) {
    using Param = decltype(param_tag);
    if (args.channels == 3) {
      position_kernel<kOp, 3, Param><<<grid, kThreads, 0, stream>>>(args);
    } else {
      position_kernel<kOp, 1, Param><<<grid, kThreads, 0, stream>>>(args);
    }
    return cudaGetLastError();
  });
}

}  // namespace

cudaError_t nll_cuda(const Args& args, cudaStream_t stream) { return launch<Op::Forward>(args, stream); }
cudaError_t nll_backward_cuda(const Args& args, cudaStream_t stream) { return launch<Op::Backward>(args, stream); }
cudaError_t sample_cuda(const Args& args, cudaStream_t stream) { return launch<Op::Sample>(args, stream); }

}  // namespace gmk::logistic_mixture
