// CUDA kernel of upfirdn2d: one thread per output element, in the output's memory order (coalesced
// stores); each visits only the taps that land on the upsampling grid (every up-th, from its phase) and
// inside the image, the filter read through the read-only cache. No torch header here.
#include "gmk/cuda_types.cuh"
#include "gmk/upfirdn2d.h"

namespace gmk::upfirdn2d {
namespace {

constexpr int kThreads = 256;

template <typename T>
__global__ void __launch_bounds__(kThreads) upfirdn2d_kernel(const Args a) {
  const int64_t total = a.batch * a.channels * a.out_h * a.out_w;
  const int64_t u = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (u >= total) return;
  int64_t n, c, oy, ox;
  if (a.out_channels_last) {  // u = ((n * out_h + oy) * out_w + ox) * channels + c
    c = u % a.channels;
    ox = (u / a.channels) % a.out_w;
    oy = (u / (a.channels * a.out_w)) % a.out_h;
    n = u / (a.channels * a.out_w * a.out_h);
  } else {  // u = ((n * channels + c) * out_h + oy) * out_w + ox
    ox = u % a.out_w;
    oy = (u / a.out_w) % a.out_h;
    c = (u / (a.out_w * a.out_h)) % a.channels;
    n = u / (a.out_w * a.out_h * a.channels);
  }
  const T* x = static_cast<const T*>(a.x) + n * a.x_strides[0] + c * a.x_strides[1];
  const float* f = static_cast<const float*>(a.f);
  // Only the taps on the upsampling grid: j from the first with (oy * down_y + j - pad_y0) % up_y == 0, by up_y.
  const int64_t ry = oy * a.downy - a.pady0, rx = ox * a.downx - a.padx0;
  const int64_t j0 = phase_of(-ry, a.upy), k0 = phase_of(-rx, a.upx);
  float acc = 0.0f;
  for (int64_t j = j0; j < a.fh; j += a.upy) {
    const int64_t iy = floor_div(ry + j, a.upy);
    if (iy < 0) continue;
    if (iy >= a.in_h) break;
    const T* x_row = x + iy * a.x_strides[2];
    const float* f_row = f + tap_index(j, a.fh, a.flip_filter) * a.fw;
    for (int64_t k = k0; k < a.fw; k += a.upx) {
      const int64_t ix = floor_div(rx + k, a.upx);
      if (ix < 0) continue;
      if (ix >= a.in_w) break;
      acc += __ldg(f_row + tap_index(k, a.fw, a.flip_filter)) * to_float(x_row[ix * a.x_strides[3]]);
    }
  }
  static_cast<T*>(a.out)[u] = from_float<T>(static_cast<float>(a.gain) * acc);
}

}  // namespace

cudaError_t run_cuda(const Args& args, cudaStream_t stream) {
  return with_cuda_type(args.dtype, [&](auto tag) {
    using T = decltype(tag);
    const int64_t total = args.batch * args.channels * args.out_h * args.out_w;
    const int64_t blocks = (total + kThreads - 1) / kThreads;
    if (blocks > 0x7fffffff) return cudaErrorInvalidConfiguration;
    upfirdn2d_kernel<T><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(args);
    return cudaGetLastError();
  });
}

}  // namespace gmk::upfirdn2d
