// Kernels that test the emulator itself (tests/test_cuda_emulation.py): what it must compute right
// (shared-memory and warp-shuffle reductions, WMMA, the half/bfloat16/TF32 roundings) and the
// bugs it must expose (a missing __syncthreads, a divergent one, bad WMMA arguments, a missing cluster
// barrier), and the limits of dynamic shared memory.
#include <cooperative_groups.h>
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

namespace cg = cooperative_groups;

// Cluster barriers the exchange kernel makes (bits of `barriers`).
constexpr int kAfterWrites = 1, kAfterReads = 2, kBeforeExit = 4, kOnlyRankZero = 8;

// Two rounds: each block writes (round + 1) (rank + 1) into slot `rank` of every block of its cluster
// (distributed shared memory), then thread 0 sums its own slots: out[round][block] = (round + 1) n (n + 1) / 2.
// Without kAfterWrites a block reads slots not written yet; without kAfterReads the second round's writes
// overwrite slots a block has not read yet; without any barrier a block writes into one that has exited.
// kOnlyRankZero: only block 0 takes the barriers (the others exit while it waits).
__global__ void cluster_exchange_kernel(float* out, int barriers) {
  __shared__ float slots[16];
  const cg::cluster_group cluster = cg::this_cluster();
  const unsigned rank = cluster.block_rank(), n = cluster.num_blocks();
  const bool syncs = !(barriers & kOnlyRankZero) || rank == 0;
  for (int round = 0; round < 2; ++round) {
    if (threadIdx.x < n) *cluster.map_shared_rank(&slots[rank], threadIdx.x) = float((round + 1) * (rank + 1));
    if ((barriers & kAfterWrites) && syncs) cluster.sync();
    if (threadIdx.x == 0) {
      float sum = 0.0f;
      for (unsigned i = 0; i < n; ++i) sum += slots[i];
      const unsigned block = blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z);
      out[round * gridDim.x * gridDim.y * gridDim.z + block] = sum;
    }
    if ((barriers & kAfterReads) && syncs) cluster.sync();
  }
  if ((barriers & kBeforeExit) && syncs) cluster.sync();
}

// out[block] = its rank in the cluster, out[blocks + block] = the cluster's size.
__global__ void cluster_rank_kernel(float* out) {
  const cg::cluster_group cluster = cg::this_cluster();
  const unsigned block = blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z);
  if (threadIdx.x == 0) {
    out[block] = float(cluster.block_rank());
    out[gridDim.x * gridDim.y * gridDim.z + block] = float(cluster.num_blocks());
  }
}

// Launches `kernel` on a grid of `grid` blocks of 64 threads in clusters of `cluster` blocks (over 8 only with
// `non_portable`, which sets the kernel's attribute either way).
template <typename... Args>
int launch_clusters(void (*kernel)(float*, Args...), const unsigned* grid, const unsigned* cluster, int non_portable,
                    float* out, Args... args) {
  const cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeNonPortableClusterSizeAllowed, non_portable);
  if (err != cudaSuccess) return err;
  cudaLaunchAttribute attribute;
  attribute.id = cudaLaunchAttributeClusterDimension;
  attribute.val.clusterDim.x = cluster[0];
  attribute.val.clusterDim.y = cluster[1];
  attribute.val.clusterDim.z = cluster[2];
  cudaLaunchConfig_t config = {};
  config.gridDim = dim3(grid[0], grid[1], grid[2]);
  config.blockDim = dim3(64);
  config.attrs = &attribute;
  config.numAttrs = 1;
  return cudaLaunchKernelEx(&config, kernel, out, args...);
}

}  // namespace

extern "C" {

// grid, cluster: 3 dimensions each. out: 2 x blocks floats.
int gmk_emu_selftest_cluster_exchange(const unsigned* grid, const unsigned* cluster, int non_portable, int barriers,
                                      float* out) {
  return launch_clusters(cluster_exchange_kernel, grid, cluster, non_portable, out, barriers);
}

int gmk_emu_selftest_cluster_rank(const unsigned* grid, const unsigned* cluster, float* out) {
  return launch_clusters(cluster_rank_kernel, grid, cluster, 0, out);
}

// cudaOccupancyMaxActiveClusters for the exchange kernel (64 threads, `dynamic` bytes of dynamic shared memory).
int gmk_emu_selftest_max_active_clusters(unsigned cluster, unsigned dynamic, int* count) {
  cudaLaunchAttribute attribute;
  attribute.id = cudaLaunchAttributeClusterDimension;
  attribute.val.clusterDim.x = cluster;
  attribute.val.clusterDim.y = attribute.val.clusterDim.z = 1;
  cudaLaunchConfig_t config = {};
  config.gridDim = dim3(cluster);
  config.blockDim = dim3(64);
  config.dynamicSmemBytes = dynamic;
  config.attrs = &attribute;
  config.numAttrs = 1;
  return cudaOccupancyMaxActiveClusters(&count[0], cluster_exchange_kernel, &config);
}

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
