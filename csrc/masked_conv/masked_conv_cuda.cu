// Masked and shifted 2D convolutions on CUDA: implicit GEMMs over the live taps only. No torch
// header: pointers, sizes and a stream in, cudaError_t out (masked_conv_ops.cpp prepares the
// operands: channels_last activations, weights packed per live tap).
//
// Two kernels, one block tile loop:
//   tap_gemm     out[p, n] = bias[n] + sum_t sum_k a[p + offset_t, k] * b[t, k, n]
//                (the forward: a = x, b = weight per tap (Cin, Cout); grad_x: a = grad_out,
//                b = weight per tap transposed (Cout, Cin), offsets reflected);
//   weight_grad  partial[split, t, i, o] = sum_{p in split} x[p + offset_t, i] * grad_out[p, o].
// The live taps of every mask are a prefix of the kernel's taps in raster order (gmk/masked_conv.h),
// so tap t is (t / kw, t % kw). Only the centre tap has dead channel pairs: they are zeroed when
// its weights are loaded (tap_gemm) or its gradient is written (weight_grad).
//
// Tiles are staged in shared memory and multiplied on tensor cores (WMMA: 16x16x16 for half types,
// 16x16x8 TF32 for float32 when the caller allows TF32) or, for exact float32 and GPUs before
// sm_80, with per-thread FMA register tiles. Accumulation is float32 throughout.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <mma.h>

#include <cstdint>
#include <type_traits>

#include "gmk/cuda_types.cuh"
#include "gmk/masked_conv.h"

namespace gmk::masked_conv {
namespace {

namespace wmma = nvcuda::wmma;

constexpr int kTileK = 32;    // the GEMM's reduction step per shared-memory tile
constexpr int kPadHalf = 8;   // row padding (elements) of shared tiles: 16 bytes for half types
constexpr int kPadFloat = 4;  // and of the float32 output tile

#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 800
#define GMK_HAS_WMMA_BF16_TF32 1
#else
#define GMK_HAS_WMMA_BF16_TF32 0
#endif

__device__ __forceinline__ int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

// Block tile BM x BN, warps of 32 x 32 outputs each; kAColMajor: the A tile is stored [k][m].
template <int BM_, int BN_, bool kAColMajor_>
struct Tile {
  static constexpr int BM = BM_, BN = BN_;
  static constexpr bool kAColMajor = kAColMajor_;
  static constexpr int kWarpsM = BM / 32, kWarpsN = BN / 32;
  static constexpr int kThreads = 32 * kWarpsM * kWarpsN;
  static constexpr int kLda = kAColMajor ? BM + kPadHalf : kTileK + kPadHalf;  // shared A row length
  static constexpr int kLdb = BN + kPadHalf;
  static constexpr int kLdc = BN + kPadFloat;
  template <typename T>
  static constexpr int a_elements() { return kAColMajor ? kTileK * kLda : BM * kLda; }
  template <typename T>
  static constexpr int smem_bytes() {
    const int operands = (a_elements<T>() + kTileK * kLdb) * int(sizeof(T));
    const int output = BM * kLdc * int(sizeof(float));
    return operands > output ? operands : output;
  }
};

// Tensor-core product of the shared tiles: each warp holds 2 x 2 16x16 float accumulators.
template <typename T, typename TileT>
struct WmmaMath {
#if GMK_HAS_WMMA_BF16_TF32
  static constexpr bool kTf32 = std::is_same<T, float>::value;
  using Elem = typename std::conditional<kTf32, wmma::precision::tf32, T>::type;
  static constexpr int kStep = kTf32 ? 8 : 16;
  using ALayout = typename std::conditional<TileT::kAColMajor, wmma::col_major, wmma::row_major>::type;
  wmma::fragment<wmma::accumulator, 16, 16, kStep, float> acc[2][2];

  __device__ void zero() {
    for (int i = 0; i < 2; ++i)
      for (int j = 0; j < 2; ++j) wmma::fill_fragment(acc[i][j], 0.0f);
  }

  __device__ void multiply(const T* As, const T* Bs, int warp_m, int warp_n) {
#pragma unroll
    for (int kk = 0; kk < kTileK; kk += kStep) {
      wmma::fragment<wmma::matrix_a, 16, 16, kStep, Elem, ALayout> a[2];
      wmma::fragment<wmma::matrix_b, 16, 16, kStep, Elem, wmma::row_major> b[2];
#pragma unroll
      for (int i = 0; i < 2; ++i) {
        const int m = warp_m * 32 + i * 16;
        const T* src = TileT::kAColMajor ? As + kk * TileT::kLda + m : As + m * TileT::kLda + kk;
        wmma::load_matrix_sync(a[i], src, TileT::kLda);
        if constexpr (kTf32)
          for (int e = 0; e < a[i].num_elements; ++e) a[i].x[e] = wmma::__float_to_tf32(a[i].x[e]);
      }
#pragma unroll
      for (int j = 0; j < 2; ++j) {
        wmma::load_matrix_sync(b[j], Bs + kk * TileT::kLdb + warp_n * 32 + j * 16, TileT::kLdb);
        if constexpr (kTf32)
          for (int e = 0; e < b[j].num_elements; ++e) b[j].x[e] = wmma::__float_to_tf32(b[j].x[e]);
      }
#pragma unroll
      for (int i = 0; i < 2; ++i)
#pragma unroll
        for (int j = 0; j < 2; ++j) wmma::mma_sync(acc[i][j], a[i], b[j], acc[i][j]);
    }
  }

  __device__ void store(float* Cs, int warp_m, int warp_n) {
    for (int i = 0; i < 2; ++i)
      for (int j = 0; j < 2; ++j)
        wmma::store_matrix_sync(Cs + (warp_m * 32 + i * 16) * TileT::kLdc + warp_n * 32 + j * 16, acc[i][j],
                                TileT::kLdc, wmma::mem_row_major);
  }
#else  // before sm_80 the launcher never picks this path
  __device__ void zero() {}
  __device__ void multiply(const T*, const T*, int, int) { __trap(); }
  __device__ void store(float*, int, int) { __trap(); }
#endif
};

// The same product with FMAs: thread (tm, tn) of a 16-wide grid owns rows tm + rows_step * r and
// columns tn + 16 * c of the block tile. Exact float32; any GPU.
template <typename T, typename TileT>
struct FmaMath {
  static constexpr int kThreadsN = 16, kThreadsM = TileT::kThreads / kThreadsN;
  static constexpr int kRows = TileT::BM / kThreadsM, kCols = TileT::BN / kThreadsN;
  float acc[kRows][kCols];

  __device__ void zero() {
    for (int r = 0; r < kRows; ++r)
      for (int c = 0; c < kCols; ++c) acc[r][c] = 0.0f;
  }

  // Each K step's kTileK products are summed on their own, then added to acc. One running sum over
  // every tap and channel (thousands of terms) has a rounding error that grows like the number of
  // terms: it exceeded the float32 tolerance (tests/conftest.py SUM_TOLERANCES) for 1 in 5 random
  // inputs of the 7x7, 64 -> 72 channel GPU test case, in the CPU emulation (bit-exact for this
  // path: tests/test_cuda_emulation.py); the two-level sum's error is ~4x smaller.
  __device__ void multiply(const T* As, const T* Bs, int, int) {
    const int tm = threadIdx.x / kThreadsN, tn = threadIdx.x % kThreadsN;
    float step[kRows][kCols] = {};
#pragma unroll 4
    for (int k = 0; k < kTileK; ++k) {
      float a[kRows], b[kCols];
#pragma unroll
      for (int r = 0; r < kRows; ++r) {
        const int m = tm + kThreadsM * r;
        a[r] = to_float(TileT::kAColMajor ? As[k * TileT::kLda + m] : As[m * TileT::kLda + k]);
      }
#pragma unroll
      for (int c = 0; c < kCols; ++c) b[c] = to_float(Bs[k * TileT::kLdb + tn + kThreadsN * c]);
#pragma unroll
      for (int r = 0; r < kRows; ++r)
#pragma unroll
        for (int c = 0; c < kCols; ++c) step[r][c] = fmaf(a[r], b[c], step[r][c]);
    }
#pragma unroll
    for (int r = 0; r < kRows; ++r)
#pragma unroll
      for (int c = 0; c < kCols; ++c) acc[r][c] += step[r][c];
  }

  __device__ void store(float* Cs, int, int) {
    const int tm = threadIdx.x / kThreadsN, tn = threadIdx.x % kThreadsN;
    for (int r = 0; r < kRows; ++r)
      for (int c = 0; c < kCols; ++c) Cs[(tm + kThreadsM * r) * TileT::kLdc + tn + kThreadsN * c] = acc[r][c];
  }
};

// Copies kVec elements (16 bytes, or one) from global to shared memory, or stores zeros.
template <typename T, int kVec>
__device__ __forceinline__ void copy_or_zero(T* dst, const T* src, bool valid) {
  if constexpr (kVec * sizeof(T) == 16) {
    *reinterpret_cast<uint4*>(dst) = valid ? __ldg(reinterpret_cast<const uint4*>(src)) : make_uint4(0, 0, 0, 0);
  } else {
    static_assert(kVec == 1, "vectors are 16 bytes or one element");
    *dst = valid ? src[0] : from_float<T>(0.0f);
  }
}

// The offset of tap t's input from the output position, or its reflection (grad_x).
struct TapOffset {
  int64_t dy, dx;
};

__device__ __forceinline__ TapOffset tap_offset(const Geometry& g, int64_t t, bool reflect) {
  const int64_t dy = t / g.kernel_w - g.pad_top, dx = t % g.kernel_w - g.pad_left;
  return reflect ? TapOffset{-dy, -dx} : TapOffset{dy, dx};
}

__device__ __forceinline__ int64_t centre_tap(const Geometry& g) {
  return g.mask == Mask::None ? -1 : (g.kernel_h / 2) * g.kernel_w + g.kernel_w / 2;
}

// --- tap_gemm --------------------------------------------------------------------------------------

template <typename T, typename TileT, typename MathT, int kVec>
__global__ void __launch_bounds__(TileT::kThreads) tap_gemm_kernel(const TapGemmArgs p) {
  constexpr int BM = TileT::BM, BN = TileT::BN;
  __shared__ __align__(128) unsigned char smem[TileT::template smem_bytes<T>()];
  T* As = reinterpret_cast<T*>(smem);
  T* Bs = As + TileT::template a_elements<T>();
  float* Cs = reinterpret_cast<float*>(smem);

  const Geometry& g = p.geometry;
  const int64_t K = p.reduce_channels, Nout = p.out_channels, HW = g.height * g.width;
  const int64_t positions = g.batch * HW;
  const int64_t m0 = int64_t(blockIdx.x) * BM, n0 = int64_t(blockIdx.y) * BN;
  const int warp = threadIdx.x / 32, warp_m = warp / TileT::kWarpsN, warp_n = warp % TileT::kWarpsN;
  const auto* a = static_cast<const T*>(p.a);
  const auto* b = static_cast<const T*>(p.b);
  const int64_t centre = centre_tap(g);

  MathT math;
  math.zero();
  for (int64_t t = 0; t < p.live_taps; ++t) {
    const TapOffset off = tap_offset(g, t, p.reflect);
    // The forward's centre tap: output channels below n0 + BN see fewer input channels.
    int64_t k_end = K;
    if (t == centre && !p.reflect) k_end = min64(K, centre_inputs(g, min64(n0 + BN, Nout) - 1));
    for (int64_t k0 = 0; k0 < k_end; k0 += kTileK) {
      for (int e = threadIdx.x; e < BM * kTileK / kVec; e += TileT::kThreads) {
        const int row = e / (kTileK / kVec), kk = (e % (kTileK / kVec)) * kVec;
        const int64_t pos = m0 + row, k = k0 + kk;
        const int64_t img = pos / HW, h = (pos % HW) / g.width + off.dy, w = pos % g.width + off.dx;
        const bool valid = pos < positions && k < K && h >= 0 && h < g.height && w >= 0 && w < g.width;
        const T* src = valid ? a + ((img * g.height + h) * g.width + w) * K + k : a;
        copy_or_zero<T, kVec>(As + row * TileT::kLda + kk, src, valid);
      }
      for (int e = threadIdx.x; e < kTileK * BN / kVec; e += TileT::kThreads) {
        const int kk = e / (BN / kVec), nn = (e % (BN / kVec)) * kVec;
        const int64_t k = k0 + kk, n = n0 + nn;
        const bool valid = k < K && n < Nout;
        T* dst = Bs + kk * TileT::kLdb + nn;
        copy_or_zero<T, kVec>(dst, valid ? b + (t * K + k) * Nout + n : b, valid);
        if (t == centre && valid) {
          for (int v = 0; v < kVec; ++v) {
            // forward: b[t, i = k, o = n]; grad_x: b[t, o = k, i = n]
            const bool live = p.reflect ? n + v < centre_inputs(g, k) : k < centre_inputs(g, n + v);
            if (!live) dst[v] = from_float<T>(0.0f);
          }
        }
      }
      __syncthreads();
      math.multiply(As, Bs, warp_m, warp_n);
      __syncthreads();
    }
  }
  math.store(Cs, warp_m, warp_n);
  __syncthreads();

  // NHWC output: consecutive threads write consecutive channels; NCHW: consecutive positions.
  const auto* bias = static_cast<const T*>(p.bias);
  auto* out = static_cast<T*>(p.out);
  for (int e = threadIdx.x; e < BM * BN; e += TileT::kThreads) {
    const int row = p.out_channels_last ? e / BN : e % BM, col = p.out_channels_last ? e % BN : e / BM;
    const int64_t pos = m0 + row, n = n0 + col;
    if (pos >= positions || n >= Nout) continue;
    float v = Cs[row * TileT::kLdc + col];
    if (bias) v += to_float(bias[n]);
    const int64_t offset = p.out_channels_last ? pos * Nout + n : ((pos / HW) * Nout + n) * HW + pos % HW;
    out[offset] = from_float<T>(v);
  }
}

// --- weight_grad -----------------------------------------------------------------------------------

template <typename T, typename TileT, typename MathT, int kVec>
__global__ void __launch_bounds__(TileT::kThreads) weight_grad_kernel(const WeightGradArgs p) {
  constexpr int BM = TileT::BM, BN = TileT::BN;
  static_assert(TileT::kAColMajor, "the x tile is stored [position][input channel]");
  __shared__ __align__(128) unsigned char smem[TileT::template smem_bytes<T>()];
  T* As = reinterpret_cast<T*>(smem);
  T* Bs = As + TileT::template a_elements<T>();
  float* Cs = reinterpret_cast<float*>(smem);

  const Geometry& g = p.geometry;
  const int64_t Cin = g.in_channels, Cout = g.out_channels, HW = g.height * g.width;
  const int64_t positions = g.batch * HW;
  const int64_t i0 = int64_t(blockIdx.x) * BM, o0 = int64_t(blockIdx.y) * BN;
  const int64_t t = blockIdx.z % p.live_taps, split = blockIdx.z / p.live_taps;
  const int64_t p_begin = split * p.positions_per_split;
  const int64_t p_end = min64(positions, p_begin + p.positions_per_split);
  const int warp = threadIdx.x / 32, warp_m = warp / TileT::kWarpsN, warp_n = warp % TileT::kWarpsN;
  const auto* x = static_cast<const T*>(p.x);
  const auto* grad_out = static_cast<const T*>(p.grad_out);
  const TapOffset off = tap_offset(g, t, false);

  MathT math;
  math.zero();
  for (int64_t p0 = p_begin; p0 < p_end; p0 += kTileK) {
    for (int e = threadIdx.x; e < kTileK * BM / kVec; e += TileT::kThreads) {
      const int kk = e / (BM / kVec), mm = (e % (BM / kVec)) * kVec;
      const int64_t pos = p0 + kk, i = i0 + mm;
      const int64_t img = pos / HW, h = (pos % HW) / g.width + off.dy, w = pos % g.width + off.dx;
      const bool valid = pos < p_end && i < Cin && h >= 0 && h < g.height && w >= 0 && w < g.width;
      const T* src = valid ? x + ((img * g.height + h) * g.width + w) * Cin + i : x;
      copy_or_zero<T, kVec>(As + kk * TileT::kLda + mm, src, valid);
    }
    for (int e = threadIdx.x; e < kTileK * BN / kVec; e += TileT::kThreads) {
      const int kk = e / (BN / kVec), nn = (e % (BN / kVec)) * kVec;
      const int64_t pos = p0 + kk, o = o0 + nn;
      const bool valid = pos < p_end && o < Cout;
      copy_or_zero<T, kVec>(Bs + kk * TileT::kLdb + nn, valid ? grad_out + pos * Cout + o : grad_out, valid);
    }
    __syncthreads();
    math.multiply(As, Bs, warp_m, warp_n);
    __syncthreads();
  }
  math.store(Cs, warp_m, warp_n);
  __syncthreads();

  const bool is_centre_tap = t == centre_tap(g);
  float* partial = p.partial + (split * p.live_taps + t) * Cin * Cout;
  for (int e = threadIdx.x; e < BM * BN; e += TileT::kThreads) {
    const int row = e / BN, col = e % BN;
    const int64_t i = i0 + row, o = o0 + col;
    if (i >= Cin || o >= Cout) continue;
    const bool live = !is_centre_tap || i < centre_inputs(g, o);
    partial[i * Cout + o] = live ? Cs[row * TileT::kLdc + col] : 0.0f;
  }
}

// --- launchers -------------------------------------------------------------------------------------

bool aligned16(const void* ptr) { return reinterpret_cast<uintptr_t>(ptr) % 16 == 0; }

// The widest vector (16 bytes) when every row of `row_length` elements starts 16-byte aligned.
template <typename T>
bool can_vectorise(const void* base, int64_t row_length) {
  return aligned16(base) && (row_length * int64_t(sizeof(T))) % 16 == 0;
}

bool has_tensor_cores_for_all_types() {
  int device = 0, major = 0;
  if (cudaGetDevice(&device) != cudaSuccess) return false;
  if (cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) != cudaSuccess) return false;
  return major >= 8;
}

// Calls launch(vec) with the vector width (16 bytes when both operands allow it, else one element).
template <typename T, typename Fn>
cudaError_t with_vector_width(bool vectorise, Fn launch) {
  if (vectorise) return launch(std::integral_constant<int, 16 / sizeof(T)>{});
  return launch(std::integral_constant<int, 1>{});
}

// Tensor cores for half types (sm_80+) and for float32 when the caller allows TF32; FMAs otherwise.
template <typename T>
bool use_tensor_cores(bool allow_tf32) {
  return has_tensor_cores_for_all_types() && (!std::is_same<T, float>::value || allow_tf32);
}

template <typename M>
struct MathTag {
  using type = M;
};

// Calls launch(MathTag<math>, vector width): tensor cores or FMAs, 16-byte loads or one element.
template <typename T, typename TileT, typename Fn>
cudaError_t launch_variant(bool allow_tf32, bool vectorise, Fn launch) {
  const bool tensor_cores = use_tensor_cores<T>(allow_tf32);
  return with_vector_width<T>(vectorise, [&](auto vec) {
    if (tensor_cores)
      launch(MathTag<WmmaMath<T, TileT>>{}, vec);
    else
      launch(MathTag<FmaMath<T, TileT>>{}, vec);
    return cudaGetLastError();
  });
}

template <typename T>
cudaError_t tap_gemm_typed(const TapGemmArgs& p, cudaStream_t stream) {
  using TileT = Tile<128, 64, false>;
  const int64_t positions = p.geometry.batch * p.geometry.height * p.geometry.width;
  const dim3 grid(unsigned((positions + TileT::BM - 1) / TileT::BM),
                  unsigned((p.out_channels + TileT::BN - 1) / TileT::BN));
  const bool vectorise = can_vectorise<T>(p.a, p.reduce_channels) && can_vectorise<T>(p.b, p.out_channels);
  return launch_variant<T, TileT>(p.allow_tf32, vectorise, [&](auto math, auto vec) {
    using MathT = typename decltype(math)::type;
    tap_gemm_kernel<T, TileT, MathT, decltype(vec)::value><<<grid, TileT::kThreads, 0, stream>>>(p);
  });
}

template <typename T>
cudaError_t weight_grad_typed(const WeightGradArgs& p, cudaStream_t stream) {
  using TileT = Tile<64, 64, true>;
  const Geometry& g = p.geometry;
  const dim3 grid(unsigned((g.in_channels + TileT::BM - 1) / TileT::BM),
                  unsigned((g.out_channels + TileT::BN - 1) / TileT::BN), unsigned(p.live_taps * p.splits));
  const bool vectorise = can_vectorise<T>(p.x, g.in_channels) && can_vectorise<T>(p.grad_out, g.out_channels);
  return launch_variant<T, TileT>(p.allow_tf32, vectorise, [&](auto math, auto vec) {
    using MathT = typename decltype(math)::type;
    weight_grad_kernel<T, TileT, MathT, decltype(vec)::value><<<grid, TileT::kThreads, 0, stream>>>(p);
  });
}

}  // namespace

cudaError_t tap_gemm_cuda(const TapGemmArgs& args, cudaStream_t stream) {
  return with_cuda_type(args.dtype, [&](auto tag) { return tap_gemm_typed<decltype(tag)>(args, stream); });
}

cudaError_t weight_grad_cuda(const WeightGradArgs& args, cudaStream_t stream) {
  return with_cuda_type(args.dtype, [&](auto tag) { return weight_grad_typed<decltype(tag)>(args, stream); });
}

}  // namespace gmk::masked_conv
