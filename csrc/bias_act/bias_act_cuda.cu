// CUDA kernels of bias_act (forward, backward, backward2): one thread per element, the tensors walked in
// memory order as a contiguous (outer, channels, inner) array (gmk/bias_act.h). No torch header here.
#include "gmk/bias_act.h"
#include "gmk/cuda_types.cuh"

namespace gmk::bias_act {
namespace {

constexpr int kThreads = 256;
constexpr int kPerThread = 4;  // elements per thread, blockDim apart (coalesced)

template <typename T>
__device__ __forceinline__ float load(const void* p, int64_t m) {
  return to_float(static_cast<const T*>(p)[m]);
}

template <typename T, Act kAct, Mode kMode, bool kReadsY>
__global__ void __launch_bounds__(kThreads) bias_act_kernel(const Args args, const Params<float> p) {
  const int64_t elements = args.outer * args.channels * args.inner;
  const int64_t first = static_cast<int64_t>(blockIdx.x) * kThreads * kPerThread + threadIdx.x;
#pragma unroll
  for (int k = 0; k < kPerThread; ++k) {
    const int64_t m = first + k * kThreads;
    if (m >= elements) return;
    float v = 0.0f;
    if constexpr (kMode != Mode::Backward || reads_x(kAct) || kReadsY) {
      v = load<T>(kReadsY ? args.y : args.x, m);
      if (!kReadsY && args.b != nullptr) v += load<T>(args.b, (m / args.inner) % args.channels);
    }
    float out;
    if constexpr (kMode == Mode::Forward) {
      out = forward<kAct, LibMath>(v, p);
    } else if constexpr (kMode == Mode::Backward) {
      const float g = load<T>(args.grad, m);
      if constexpr (reads_x(kAct)) {
        out = backward_from_x<kAct, LibMath>(g, v, p);
      } else if constexpr (kReadsY) {
        out = backward_from_y<kAct>(g, v, p);
      } else {
        out = g * p.gain;
      }
    } else {
      out = backward2<kAct, LibMath>(load<T>(args.grad2, m), load<T>(args.grad, m), v, p);
    }
    static_cast<T*>(args.out)[m] = from_float<T>(out);
  }
}

template <typename T>
float rounded_clamp(double clamp);
template <>
float rounded_clamp<float>(double clamp) { return static_cast<float>(clamp); }
template <>
float rounded_clamp<__half>(double clamp) { return __half2float(__float2half_rn(static_cast<float>(clamp))); }
template <>
float rounded_clamp<__nv_bfloat16>(double clamp) {
  return __bfloat162float(__float2bfloat16_rn(static_cast<float>(clamp)));
}

template <typename T, Act kAct, Mode kMode>
cudaError_t launch(const Args& args, cudaStream_t stream) {
  const int64_t elements = args.outer * args.channels * args.inner;
  const int64_t blocks = (elements + kThreads * kPerThread - 1) / (kThreads * kPerThread);
  if (blocks > 0x7fffffff) return cudaErrorInvalidConfiguration;
  // y holds a clamped value as the clamp rounded to T: the mask compares with that.
  const float clamp = args.y != nullptr ? rounded_clamp<T>(args.clamp) : static_cast<float>(args.clamp);
  const Params<float> p{static_cast<float>(args.alpha), static_cast<float>(args.gain), clamp, args.has_clamp};
  if (args.y != nullptr) {
    bias_act_kernel<T, kAct, kMode, true><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(args, p);
  } else {
    bias_act_kernel<T, kAct, kMode, false><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(args, p);
  }
  return cudaGetLastError();
}

}  // namespace

cudaError_t run_cuda(const Args& args, cudaStream_t stream) {
  return with_cuda_type(args.dtype, [&](auto tag) {
    using T = decltype(tag);
    cudaError_t err = cudaErrorInvalidValue;
    with_act(args.act, [&](auto act_tag) {
      constexpr Act kAct = decltype(act_tag)::value;
      if (args.mode == Mode::Forward) {
        err = launch<T, kAct, Mode::Forward>(args, stream);
      } else if (args.mode == Mode::Backward) {
        err = launch<T, kAct, Mode::Backward>(args, stream);
      } else if constexpr (reads_x(kAct)) {
        err = launch<T, kAct, Mode::Backward2>(args, stream);
      }
    });
    return err;
  });
}

}  // namespace gmk::bias_act
