// CUDA kernels of the causal convolution and the fused WaveNet layer. No torch header here (see
// DESIGN.md): plain pointers, sizes and strides in, cudaError_t out. Every product accumulates in
// float32 (half types are converted as they are staged); padding is never stored: a staged input
// element outside [0, T) is a zero.
//
//   conv_kernel         a (64 outputs x 64 time steps) tile per block, 4x4 per thread; its K loop runs
//                       over (tap, 16 input channels), the shifted x tile and the weight tile staged in
//                       shared memory. Forward (sign -1) and grad_x (sign +1, the mirrored taps).
//   weight_grad_kernel  a (32 x 32) tile of one tap of grad_W per block, over one range of time steps
//                       of every sample; float32 partial sums, added up by the op.
//   layer_kernel        one sample, 32 time steps per block: h = conv + bias + cond for 32 gate pairs
//                       (c, c + R) at a time, z = tanh(a) σ(b) (gmk/gated.h) kept in shared memory,
//                       then the R residual and S skip outputs as 1x1 products of z. Neither h nor z
//                       reaches global memory.
//   layer_grad_h_kernel the backward's first pass, tiled the same way: h again into shared memory, then
//                       grad_z = scale W_resᵀ g_res + W_skipᵀ g_skip and the gate's derivative: writes
//                       grad_h (2R channels) and z, which the op's GEMMs and the conv kernels take on.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <type_traits>

#include "gmk/cuda_types.cuh"
#include "gmk/causal_conv.h"

namespace gmk::causal_conv {
namespace {

constexpr int kThreads = 256;

// ---- the convolution (forward and grad_x) --------------------------------------------------------
constexpr int kConvO = 64, kConvT = 64, kConvK = 16;

template <typename T>
__global__ void __launch_bounds__(kThreads) conv_kernel(ConvArgs p) {
  __shared__ float xs[kConvK][kConvT + 1];
  __shared__ float ws[kConvK][kConvO + 1];
  const int64_t t_tiles = (p.length + kConvT - 1) / kConvT;
  const int64_t n = blockIdx.x / t_tiles, t0 = (blockIdx.x % t_tiles) * kConvT;
  const int64_t o0 = static_cast<int64_t>(blockIdx.y) * kConvO;
  const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;  // outputs (o0 + ty + 16r, t0 + tx + 16c)
  const T* in = static_cast<const T*>(p.in) + n * p.in_strides.outer;
  const T* w = static_cast<const T*>(p.weight);
  float acc[4][4] = {};
  for (int64_t j = 0; j < p.kernel_size; ++j) {
    const int64_t shift = p.sign * tap_shift(j, p.kernel_size, p.dilation, p.length);
    for (int64_t i0 = 0; i0 < p.in_channels; i0 += kConvK) {
      for (int e = threadIdx.x; e < kConvK * kConvT; e += kThreads) {
        const int kk = e / kConvT, tt = e % kConvT;
        const int64_t i = i0 + kk, t = t0 + tt + shift;
        xs[kk][tt] = i < p.in_channels && t >= 0 && t < p.length
                         ? to_float(in[i * p.in_strides.channel + t * p.in_strides.inner]) : 0.0f;
      }
      for (int e = threadIdx.x; e < kConvK * kConvO; e += kThreads) {
        const int oo = e / kConvK, kk = e % kConvK;
        const int64_t o = o0 + oo, i = i0 + kk;
        ws[kk][oo] = o < p.out_channels && i < p.in_channels
                         ? to_float(w[o * p.w_out_stride + i * p.w_in_stride + j * p.w_tap_stride]) : 0.0f;
      }
      __syncthreads();
#pragma unroll 4
      for (int kk = 0; kk < kConvK; ++kk) {
        float a[4], b[4];
#pragma unroll
        for (int r = 0; r < 4; ++r) a[r] = ws[kk][ty + 16 * r];
#pragma unroll
        for (int c = 0; c < 4; ++c) b[c] = xs[kk][tx + 16 * c];
#pragma unroll
        for (int r = 0; r < 4; ++r)
#pragma unroll
          for (int c = 0; c < 4; ++c) acc[r][c] += a[r] * b[c];
      }
      __syncthreads();
    }
  }
  const T* bias = static_cast<const T*>(p.bias);
  T* out = static_cast<T*>(p.out) + n * p.out_channels * p.length;
#pragma unroll
  for (int r = 0; r < 4; ++r) {
    const int64_t o = o0 + ty + 16 * r;
    if (o >= p.out_channels) continue;
    const float b = bias ? to_float(bias[o]) : 0.0f;
#pragma unroll
    for (int c = 0; c < 4; ++c) {
      const int64_t t = t0 + tx + 16 * c;
      if (t < p.length) out[o * p.length + t] = from_float<T>(acc[r][c] + b);
    }
  }
}

// ---- the weight's gradient ------------------------------------------------------------------------
constexpr int kGradTile = 32, kGradT = 32;

template <typename T>
__global__ void __launch_bounds__(kThreads) weight_grad_kernel(WeightGradArgs p) {
  __shared__ float gs[kGradTile][kGradT + 1];
  __shared__ float xs[kGradTile][kGradT + 1];
  const int64_t i_tiles = (p.in_channels + kGradTile - 1) / kGradTile;
  const int64_t o0 = (blockIdx.y / i_tiles) * kGradTile, i0 = (blockIdx.y % i_tiles) * kGradTile;
  const int64_t j = blockIdx.z, shift = tap_shift(j, p.kernel_size, p.dilation, p.length);
  const int64_t per_split = (p.length + p.splits - 1) / p.splits;
  const int64_t t_begin = blockIdx.x * per_split, t_end = std::min(p.length, t_begin + per_split);
  const int tx = threadIdx.x % 32, ty = threadIdx.x / 32;  // outputs (o0 + ty + 8r, i0 + tx)
  const T* g = static_cast<const T*>(p.grad_out);
  const T* x = static_cast<const T*>(p.x);
  float acc[4] = {};
  for (int64_t n = 0; n < p.batch; ++n) {
    for (int64_t t0 = t_begin; t0 < t_end; t0 += kGradT) {
      for (int e = threadIdx.x; e < kGradTile * kGradT; e += kThreads) {
        const int row = e / kGradT, tt = e % kGradT;
        const int64_t t = t0 + tt, o = o0 + row, i = i0 + row, ts = t - shift;
        gs[row][tt] = o < p.out_channels && t < t_end
                          ? to_float(g[(n * p.out_channels + o) * p.length + t]) : 0.0f;
        xs[row][tt] = i < p.in_channels && t < t_end && ts >= 0
                          ? to_float(x[n * p.x_strides.outer + i * p.x_strides.channel + ts * p.x_strides.inner])
                          : 0.0f;
      }
      __syncthreads();
#pragma unroll 8
      for (int tt = 0; tt < kGradT; ++tt) {
        const float xv = xs[tx][tt];
#pragma unroll
        for (int r = 0; r < 4; ++r) acc[r] += gs[ty + 8 * r][tt] * xv;
      }
      __syncthreads();
    }
  }
  const int64_t i = i0 + tx;
  if (i >= p.in_channels) return;
#pragma unroll
  for (int r = 0; r < 4; ++r) {
    const int64_t o = o0 + ty + 8 * r;
    if (o < p.out_channels) {
      p.partial[((blockIdx.x * p.out_channels + o) * p.in_channels + i) * p.kernel_size + j] = acc[r];
    }
  }
}

// ---- the fused layer ------------------------------------------------------------------------------
constexpr int kLayerT = 32, kLayerC = 32, kLayerK = 32;

// Shared memory of the layer kernels' convolution phase.
struct GateTiles {
  float xs[kLayerK][kLayerT + 1];
  float wa[kLayerC][kLayerK + 1];
  float wb[kLayerC][kLayerK + 1];
};

// For the block's sample n and time steps t0 + tx (tx = threadIdx.x % 32): a = conv + bias + cond of
// every gate row c < R and b of row R + c, 32 pairs at a time (thread rows c0 + ty + 8r); calls
// emit(c, a, b) for each. Ends with a barrier: emit's shared-memory writes are visible after it.
template <typename T, typename Emit>
__device__ __forceinline__ void gate_inputs(const LayerArgs& p, int64_t n, int64_t t0, GateTiles& tiles,
                                            Emit emit) {
  const int64_t r_ch = p.residual;
  const int tx = threadIdx.x % 32, ty = threadIdx.x / 32;
  const int64_t t = t0 + tx;
  const T* x = static_cast<const T*>(p.x) + n * p.x_strides.outer;
  const T* cond = static_cast<const T*>(p.cond);
  const T* w = static_cast<const T*>(p.conv_weight);
  const T* conv_bias = static_cast<const T*>(p.conv_bias);
  for (int64_t c0 = 0; c0 < r_ch; c0 += kLayerC) {
    float acc_a[4] = {}, acc_b[4] = {};
    for (int64_t j = 0; j < p.kernel_size; ++j) {
      const int64_t shift = tap_shift(j, p.kernel_size, p.dilation, p.length);
      for (int64_t i0 = 0; i0 < r_ch; i0 += kLayerK) {
        for (int e = threadIdx.x; e < kLayerK * kLayerT; e += kThreads) {
          const int kk = e / kLayerT, tt = e % kLayerT;
          const int64_t i = i0 + kk, ts = t0 + tt - shift;
          tiles.xs[kk][tt] = i < r_ch && ts >= 0 && ts < p.length
                                 ? to_float(x[i * p.x_strides.channel + ts * p.x_strides.inner]) : 0.0f;
          const int cc = e / kLayerK, ck = e % kLayerK;  // weight tiles: (c, ik) of both halves
          const int64_t c = c0 + cc, ik = i0 + ck;
          const bool live = c < r_ch && ik < r_ch;
          tiles.wa[cc][ck] = live ? to_float(w[(c * r_ch + ik) * p.kernel_size + j]) : 0.0f;
          tiles.wb[cc][ck] = live ? to_float(w[((r_ch + c) * r_ch + ik) * p.kernel_size + j]) : 0.0f;
        }
        __syncthreads();
#pragma unroll 8
        for (int kk = 0; kk < kLayerK; ++kk) {
          const float xv = tiles.xs[kk][tx];
#pragma unroll
          for (int r = 0; r < 4; ++r) {
            acc_a[r] += tiles.wa[ty + 8 * r][kk] * xv;
            acc_b[r] += tiles.wb[ty + 8 * r][kk] * xv;
          }
        }
        __syncthreads();
      }
    }
#pragma unroll
    for (int r = 0; r < 4; ++r) {
      const int64_t c = c0 + ty + 8 * r;
      if (c >= r_ch) continue;
      float a = acc_a[r], b = acc_b[r];
      if (conv_bias) {
        a += to_float(conv_bias[c]);
        b += to_float(conv_bias[r_ch + c]);
      }
      if (cond && t < p.length) {
        const int64_t base = n * p.cond_strides.outer + t * p.cond_strides.inner;
        a += to_float(cond[base + c * p.cond_strides.channel]);
        b += to_float(cond[base + (r_ch + c) * p.cond_strides.channel]);
      }
      emit(c, a, b);
    }
  }
  __syncthreads();
}

// Forward: z = tanh(a) σ(b) into shared memory, then the R residual and S skip outputs, 32 rows at a time.
template <typename T>
__global__ void __launch_bounds__(kThreads) layer_kernel(LayerArgs p) {
  __shared__ GateTiles tiles;
  extern __shared__ float zs[];  // (R, kLayerT): z of this block's time steps
  const int64_t r_ch = p.residual, t_tiles = (p.length + kLayerT - 1) / kLayerT;
  const int64_t n = blockIdx.x / t_tiles, t0 = (blockIdx.x % t_tiles) * kLayerT;
  const int tx = threadIdx.x % 32, ty = threadIdx.x / 32;
  const int64_t t = t0 + tx;
  gate_inputs<T>(p, n, t0, tiles, [&](int64_t c, float a, float b) {
    zs[c * kLayerT + tx] = gated::forward<true, LibMath>(a, b);
  });

  const T* x = static_cast<const T*>(p.x) + n * p.x_strides.outer;
  const T* res_weight = static_cast<const T*>(p.res_weight);
  const T* skip_weight = static_cast<const T*>(p.skip_weight);
  const T* res_bias = static_cast<const T*>(p.res_bias);
  const T* skip_bias = static_cast<const T*>(p.skip_bias);
  const int64_t rows = r_ch + p.skip_channels;
  for (int64_t o0 = 0; o0 < rows; o0 += kLayerC) {
    float acc[4] = {};
    for (int64_t c = 0; c < r_ch; ++c) {
      const float zv = zs[c * kLayerT + tx];
#pragma unroll
      for (int r = 0; r < 4; ++r) {
        const int64_t o = o0 + ty + 8 * r;  // one row per warp: the weight load is a broadcast
        if (o < r_ch) acc[r] += to_float(res_weight[o * r_ch + c]) * zv;
        else if (o < rows) acc[r] += to_float(skip_weight[(o - r_ch) * r_ch + c]) * zv;
      }
    }
    if (t >= p.length) continue;
#pragma unroll
    for (int r = 0; r < 4; ++r) {
      const int64_t o = o0 + ty + 8 * r;
      if (o < r_ch) {
        const float xv = to_float(x[o * p.x_strides.channel + t * p.x_strides.inner]);
        const float b = res_bias ? to_float(res_bias[o]) : 0.0f;
        static_cast<T*>(p.x_next)[(n * r_ch + o) * p.length + t] =
            from_float<T>(residual_out(xv, acc[r], b, p.residual_scale));
      } else if (o < rows) {
        const int64_t s = o - r_ch;
        const float b = skip_bias ? to_float(skip_bias[s]) : 0.0f;
        static_cast<T*>(p.skip)[(n * p.skip_channels + s) * p.length + t] = from_float<T>(acc[r] + b);
      }
    }
  }
}

// Backward up to grad_h: a and b into shared memory, then 32 gate rows at a time
// grad_z = scale W_resᵀ g_res + W_skipᵀ g_skip and the gate's derivative (gmk/gated.h); writes grad_h, z.
template <typename T>
__global__ void __launch_bounds__(kThreads) layer_grad_h_kernel(LayerArgs p) {
  __shared__ GateTiles tiles;
  extern __shared__ float hs[];  // (2R, kLayerT): a, then b, of this block's time steps
  const int64_t r_ch = p.residual, t_tiles = (p.length + kLayerT - 1) / kLayerT;
  const int64_t n = blockIdx.x / t_tiles, t0 = (blockIdx.x % t_tiles) * kLayerT;
  const int tx = threadIdx.x % 32, ty = threadIdx.x / 32;
  const int64_t t = t0 + tx;
  gate_inputs<T>(p, n, t0, tiles, [&](int64_t c, float a, float b) {
    hs[c * kLayerT + tx] = a;
    hs[(r_ch + c) * kLayerT + tx] = b;
  });
  if (t >= p.length) return;  // no barrier follows

  const T* res_weight = static_cast<const T*>(p.res_weight);
  const T* skip_weight = static_cast<const T*>(p.skip_weight);
  const T* g_res = static_cast<const T*>(p.grad_x_next) + n * r_ch * p.length + t;
  const T* g_skip = static_cast<const T*>(p.grad_skip) + n * p.skip_channels * p.length + t;
  T* grad_h = static_cast<T*>(p.grad_h) + n * 2 * r_ch * p.length + t;
  T* z = static_cast<T*>(p.z) + n * r_ch * p.length + t;
  for (int64_t c0 = 0; c0 < r_ch; c0 += kLayerC) {
    float grad_z[4] = {}, grad_skip_part[4] = {};
    for (int64_t o = 0; o < r_ch; ++o) {
      const float g = to_float(g_res[o * p.length]);
#pragma unroll
      for (int r = 0; r < 4; ++r) {
        const int64_t c = c0 + ty + 8 * r;  // one row per warp: the weight load is a broadcast
        if (c < r_ch) grad_z[r] += to_float(res_weight[o * r_ch + c]) * g;
      }
    }
    for (int64_t s = 0; s < p.skip_channels; ++s) {
      const float g = to_float(g_skip[s * p.length]);
#pragma unroll
      for (int r = 0; r < 4; ++r) {
        const int64_t c = c0 + ty + 8 * r;
        if (c < r_ch) grad_skip_part[r] += to_float(skip_weight[s * r_ch + c]) * g;
      }
    }
#pragma unroll
    for (int r = 0; r < 4; ++r) {
      const int64_t c = c0 + ty + 8 * r;
      if (c >= r_ch) continue;
      const float a = hs[c * kLayerT + tx], b = hs[(r_ch + c) * kLayerT + tx];
      float grad_a, grad_b;
      gated::backward<true, LibMath>(a, b, p.residual_scale * grad_z[r] + grad_skip_part[r], grad_a, grad_b);
      grad_h[c * p.length] = from_float<T>(grad_a);
      grad_h[(r_ch + c) * p.length] = from_float<T>(grad_b);
      z[c * p.length] = from_float<T>(gated::forward<true, LibMath>(a, b));
    }
  }
}

bool fits_grid_x(int64_t blocks) { return blocks >= 1 && blocks <= 0x7fffffff; }

}  // namespace

cudaError_t conv_cuda(const ConvArgs& args, cudaStream_t stream) {
  const int64_t blocks_x = args.batch * ((args.length + kConvT - 1) / kConvT);
  const int64_t blocks_y = (args.out_channels + kConvO - 1) / kConvO;
  if (!fits_grid_x(blocks_x) || blocks_y > 65535) return cudaErrorInvalidConfiguration;
  return with_cuda_type(args.dtype, [&](auto tag) {
    using T = decltype(tag);
    conv_kernel<T><<<dim3(blocks_x, blocks_y), kThreads, 0, stream>>>(args);
    return cudaGetLastError();
  });
}

cudaError_t weight_grad_cuda(const WeightGradArgs& args, cudaStream_t stream) {
  const int64_t tiles = ((args.out_channels + kGradTile - 1) / kGradTile) *
                        ((args.in_channels + kGradTile - 1) / kGradTile);
  if (!fits_grid_x(args.splits) || tiles > 65535 || args.kernel_size > 65535) return cudaErrorInvalidConfiguration;
  return with_cuda_type(args.dtype, [&](auto tag) {
    using T = decltype(tag);
    weight_grad_kernel<T><<<dim3(args.splits, tiles, args.kernel_size), kThreads, 0, stream>>>(args);
    return cudaGetLastError();
  });
}

namespace {

// Launches one of the layer kernels: one block per (sample, 32 time steps), rows_in_shared rows of
// kLayerT floats of dynamic shared memory (beyond the default 48 KB it needs the opt-in, which fails on
// a device with too little).
template <typename Kernel>
cudaError_t launch_layer(Kernel kernel, const LayerArgs& args, int64_t rows_in_shared, cudaStream_t stream) {
  const int64_t blocks = args.batch * ((args.length + kLayerT - 1) / kLayerT);
  if (!fits_grid_x(blocks)) return cudaErrorInvalidConfiguration;
  const size_t bytes = static_cast<size_t>(rows_in_shared) * kLayerT * sizeof(float);
  const cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                               static_cast<int>(bytes));
  if (err != cudaSuccess) return err;
  kernel<<<blocks, kThreads, bytes, stream>>>(args);
  return cudaGetLastError();
}

}  // namespace

cudaError_t layer_cuda(const LayerArgs& args, cudaStream_t stream) {
  return with_cuda_type(args.dtype, [&](auto tag) {
    using T = decltype(tag);
    return launch_layer(layer_kernel<T>, args, args.residual, stream);
  });
}

cudaError_t max_layer_residual_cuda(bool backward, int64_t* max_residual) {
  int device = 0, optin = 0;
  cudaError_t err = cudaGetDevice(&device);
  if (err == cudaSuccess) err = cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device);
  if (err != cudaSuccess) return err;
  // The dynamic rows start after the static GateTiles (aligned: leave 128 bytes of slack).
  const int64_t rows = (int64_t(optin) - int64_t(sizeof(GateTiles)) - 128) / (kLayerT * int64_t(sizeof(float)));
  *max_residual = backward ? rows / 2 : rows;
  return cudaSuccess;
}

cudaError_t layer_grad_h_cuda(const LayerArgs& args, cudaStream_t stream) {
  return with_cuda_type(args.dtype, [&](auto tag) {
    using T = decltype(tag);
    return launch_layer(layer_grad_h_kernel<T>, args, 2 * args.residual, stream);
  });
}

}  // namespace gmk::causal_conv
