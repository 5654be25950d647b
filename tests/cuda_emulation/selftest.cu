// Kernels that test the emulator itself (tests/test_cuda_emulation.py): what it must compute right
// (shared-memory and warp-shuffle reductions, WMMA, the half/bfloat16/TF32 roundings) and the
// bugs it must expose (a missing __syncthreads, a divergent one, bad WMMA arguments), and the limits of
// dynamic shared memory.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <mma.h>

#include <cstdint>

namespace {

namespace wmma = nvcuda::wmma;

// Per-block sums of `in` (blockDim.x = 128): a shared-memory tree down to a warp, then shuffles.
__global__ void block_sum_kernel(const float* in, float* out, int n) {
  __shared__ float partial[128];
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  partial[threadIdx.x] = i < n ? in[i] : 0.0f;
  __syncthreads();
  for (unsigned stride = 64; stride >= 32; stride /= 2) {
    if (threadIdx.x < stride) partial[threadIdx.x] += partial[threadIdx.x + stride];
    __syncthreads();
  }
  if (threadIdx.x < 32) {
    float v = partial[threadIdx.x];
    for (int offset = 16; offset > 0; offset /= 2) v += __shfl_down_sync(0xffffffffu, v, offset);
    v = __shfl_sync(0xffffffffu, v, 0);  // every lane gets lane 0's total
    if (threadIdx.x == 31) out[blockIdx.x] = v;
  }
}

// Reads a neighbour's shared value with no barrier after the writes: a race.
__global__ void missing_barrier_kernel(float* out) {
  __shared__ float values[64];
  values[threadIdx.x] = float(threadIdx.x);
  out[threadIdx.x] = values[(threadIdx.x + 1) % 64];
}

// Half the block waits at a barrier the other half never reaches.
__global__ void divergent_barrier_kernel(float* out) {
  if (threadIdx.x < 16) __syncthreads();
  out[threadIdx.x] = 1.0f;
}

// Writes through `p`, a bad address: the emulator turns the SIGSEGV into a fault.
__global__ void write_kernel(float* p) { p[threadIdx.x] = 1.0f; }

// A 16-byte load from `p`, which is not 16-byte aligned.
__global__ void vector_load_kernel(const float* p, float* out) {
  const uint4 v = __ldg(reinterpret_cast<const uint4*>(p));
  out[threadIdx.x] = __uint_as_float(v.x);
}

// One warp: d = a b + c for 16x16 tiles in global memory, a (16 x 16) stored as a_layout says.
template <typename T, int K, typename ALayout>
__global__ void wmma_kernel(const T* a, const T* b, const float* c, float* d, unsigned lda) {
  using Elem = typename std::conditional<K == 8, wmma::precision::tf32, T>::type;
  wmma::fragment<wmma::matrix_a, 16, 16, K, Elem, ALayout> fa;
  wmma::fragment<wmma::matrix_b, 16, 16, K, Elem, wmma::row_major> fb;
  wmma::fragment<wmma::accumulator, 16, 16, K, float> acc;
  wmma::load_matrix_sync(acc, c, 16, wmma::mem_row_major);
  for (int k = 0; k < 16; k += K) {
    const bool row = std::is_same<ALayout, wmma::row_major>::value;
    wmma::load_matrix_sync(fa, a + (row ? k : k * lda), lda);
    wmma::load_matrix_sync(fb, b + k * 16, 16);
    if constexpr (K == 8) {
      for (int e = 0; e < fa.num_elements; ++e) fa.x[e] = wmma::__float_to_tf32(fa.x[e]);
      for (int e = 0; e < fb.num_elements; ++e) fb.x[e] = wmma::__float_to_tf32(fb.x[e]);
    }
    wmma::mma_sync(acc, fa, fb, acc);
  }
  wmma::store_matrix_sync(d, acc, 16, wmma::mem_row_major);
}

// Reverses each block's `n` floats through dynamic shared memory, with 1 KB of static shared memory.
__global__ void dynamic_shared_kernel(const float* in, float* out, int n) {
  extern __shared__ float values[];
  __shared__ float scratch[256];
  for (int i = threadIdx.x; i < n; i += blockDim.x) values[i] = in[blockIdx.x * n + i];
  scratch[threadIdx.x] = 0.0f;
  __syncthreads();
  for (int i = threadIdx.x; i < n; i += blockDim.x) out[blockIdx.x * n + i] = values[n - 1 - i] + scratch[threadIdx.x];
}

}  // namespace

extern "C" {

// Launches dynamic_shared_kernel on 2 blocks of 256 threads with n floats of dynamic shared memory, after
// cudaFuncSetAttribute(..., opt_in bytes) when opt_in >= 0; returns the first error.
int gmk_emu_selftest_dynamic_shared(const float* in, float* out, int n, int opt_in) {
  if (opt_in >= 0) {
    const cudaError_t err =
        cudaFuncSetAttribute(dynamic_shared_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, opt_in);
    if (err != cudaSuccess) return err;
  }
  dynamic_shared_kernel<<<2, 256, n * sizeof(float)>>>(in, out, n);
  return cudaGetLastError();
}

int gmk_emu_selftest_block_sum(const float* in, float* out, int n) {
  block_sum_kernel<<<(n + 127) / 128, 128>>>(in, out, n);
  return cudaGetLastError();
}

int gmk_emu_selftest_missing_barrier(float* out) {
  missing_barrier_kernel<<<1, 64>>>(out);
  return cudaGetLastError();
}

int gmk_emu_selftest_divergent_barrier(float* out) {
  divergent_barrier_kernel<<<1, 32>>>(out);
  return cudaGetLastError();
}

int gmk_emu_selftest_write(float* p) {
  write_kernel<<<1, 32>>>(p);
  return cudaGetLastError();
}

int gmk_emu_selftest_vector_load(const float* p, float* out) {
  vector_load_kernel<<<1, 32>>>(p, out);
  return cudaGetLastError();
}

// dtype 0: float32 as TF32 (k step 8), 1: half, 2: bfloat16; a_col_major: a stored transposed.
int gmk_emu_selftest_wmma(int dtype, int a_col_major, const void* a, const void* b, const float* c, float* d,
                          unsigned lda) {
  auto run = [&](auto tag, auto k) {
    using T = decltype(tag);
    constexpr int K = decltype(k)::value;
    if (a_col_major)
      wmma_kernel<T, K, wmma::col_major><<<1, 32>>>(static_cast<const T*>(a), static_cast<const T*>(b), c, d, lda);
    else
      wmma_kernel<T, K, wmma::row_major><<<1, 32>>>(static_cast<const T*>(a), static_cast<const T*>(b), c, d, lda);
  };
  if (dtype == 0) run(float{}, std::integral_constant<int, 8>{});
  if (dtype == 1) run(__half{}, std::integral_constant<int, 16>{});
  if (dtype == 2) run(__nv_bfloat16{}, std::integral_constant<int, 16>{});
  return cudaGetLastError();
}

// out[i] = float(T(in[i])): T = __half (1), __nv_bfloat16 (2), TF32 by __float_to_tf32 (0).
void gmk_emu_selftest_round(int dtype, const float* in, float* out, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    if (dtype == 0) out[i] = wmma::__float_to_tf32(in[i]);
    if (dtype == 1) out[i] = __half2float(__float2half_rn(in[i]));
    if (dtype == 2) out[i] = __bfloat162float(__float2bfloat16_rn(in[i]));
  }
}

}  // extern "C"
