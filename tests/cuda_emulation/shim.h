// CUDA on the CPU, for tests: the subset of the CUDA language and runtime that our .cu files use,
// as host C++, so that g++ compiles the kernels unchanged and tests run them without a GPU
// (tests/test_cuda_emulation.py; build.py rewrites two constructs no macro can, see there).
//
// Execution model (emulator.cpp). The blocks of a grid run one after another, in a shuffled but fixed
// order (with thread-block clusters: the clusters; see below). gmk_emu_run_last_clusters(n) makes
// launches run only their last n blocks (clusters), for tests of the index arithmetic of grids too
// large to run (sizes past 2^31 elements). The threads of a block are fibers (ucontext) on the calling
// OS thread. Between two __syncthreads, the warps run one after another, each until all its threads
// wait at the barrier (or exited); a warp's threads take turns, each running until the next barrier or
// warp-collective operation (shuffle, __syncwarp, WMMA). The order of warps and of lanes alternates
// between ascending and descending from one barrier to the next. So a missing __syncthreads shows
// deterministically: in one phase or the other a warp reads what another has not written yet, or has
// already overwritten. Shared memory is a per-block arena filled with 0xFF bytes (NaN in every float
// type) when the block starts. Faults, which the tests read (gmk_emu_take_faults): barrier divergence
// (a thread exits, or never arrives, while others wait), misaligned __ldg or WMMA pointers, WMMA
// arguments that differ across a warp, SIGSEGV in a kernel (an address out of any allocation, a
// misaligned 16-byte access), too large launches, __trap(). Bad launch configurations set
// cudaGetLastError, as on a GPU.
//
// WMMA: every thread of a warp holds the whole tile in its fragment (the hardware spreads the tile
// over the warp in an unspecified register mapping); one lane computes a product and the others
// reuse it when their operands are identical. The emulation checks what the kernel controls —
// pointers, 32-byte alignment, ldm, layouts, shapes, and that the warp calls each operation
// together with the same arguments — not the register mapping, which code that uses only
// load/store/fill/mma and uniform element-wise updates never sees. TF32 operands are read as the
// tensor cores read them (the top 19 bits); products are exact, sums in float32 in k order (the
// hardware's order is unspecified; tests have float tolerances).
//
// Dynamic shared memory (`extern __shared__ T name[];`, rewritten by build.py): the launch's bytes
// sit at the start of the block's arena, the static variables after them. Static plus dynamic bytes
// over 48 KB need cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes)
// first, which fails above the device's opt-in limit (227 KB on 9.0, 64 KB on 7.5); a launch with
// more dynamic bytes than the attribute fails (cudaErrorInvalidValue), and static plus dynamic bytes
// over the limit (48 KB, or the device's with the opt-in) are a fault, as the GPU refuses the launch.
//
// Thread-block clusters (cudaLaunchKernelEx with cudaLaunchAttributeClusterDimension; cooperative_groups'
// this_cluster(): block_rank, num_blocks, sync, map_shared_rank): the blocks of a cluster run at once,
// each with its own shared memory arena, their threads fibers of one scheduler. A block runs (as above,
// barrier to barrier) until every one of its threads waits at the cluster barrier or has exited, then the
// next block; the order of the blocks alternates between ascending and descending rank from one cluster
// barrier to the next, so a missing cluster barrier shows as a missing __syncthreads does: a block reads
// what another has not written into its shared memory yet, or has already overwritten. map_shared_rank of
// an address outside the caller's shared memory, of a rank outside the cluster, or into the memory of a
// block that has exited, and threads that exit while others wait at the cluster barrier, are faults.
// Clusters need compute capability 9.0, at most 8 blocks (16 after cudaFuncAttributeNonPortable-
// ClusterSizeAllowed) and a grid that they tile (else cudaErrorNotSupported / cudaErrorInvalidClusterSize).
// cudaOccupancyMaxActiveClusters is an upper bound (shared memory and threads per multiprocessor; no GPCs).
//
// Not emulated (add here what a new kernel needs): atomics other than atomicAdd on float, streams and
// events (launches are synchronous), cp.async, __cluster_dims__ (does not compile here), cluster barriers
// in inline PTX, half arithmetic operators; __launch_bounds__ is not checked against the launch.
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <tuple>
#include <type_traits>
#include <utility>

// --- function and variable qualifiers ---------------------------------------------------------------
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline __attribute__((always_inline))
#define __noinline__ __attribute__((noinline))
#define __launch_bounds__(...)
#define __align__(n) alignas(n)
#define __restrict__ __restrict
#define __constant__ static
// build.py rewrites every `__shared__ T name[N];`; one it could not rewrite fails to compile here.
#define __shared__ gmk_emu_shared_declaration_not_rewritten_by_build_py

// --- runtime types ---------------------------------------------------------------------------------
enum cudaError_t {
  cudaSuccess = 0,
  cudaErrorInvalidValue = 1,
  cudaErrorInvalidConfiguration = 9,
  cudaErrorInvalidDevice = 101,
  cudaErrorIllegalAddress = 700,
  cudaErrorLaunchFailure = 719,
  cudaErrorNotSupported = 801,
  cudaErrorInvalidClusterSize = 912,
};
using cudaError = cudaError_t;

enum cudaDeviceAttr {
  cudaDevAttrMaxThreadsPerBlock = 1,
  cudaDevAttrMaxSharedMemoryPerBlock = 8,
  cudaDevAttrWarpSize = 10,
  cudaDevAttrMultiProcessorCount = 16,
  cudaDevAttrComputeCapabilityMajor = 75,
  cudaDevAttrComputeCapabilityMinor = 76,
  cudaDevAttrMaxSharedMemoryPerBlockOptin = 97,
};

enum cudaFuncAttribute {
  cudaFuncAttributeMaxDynamicSharedMemorySize = 8,
  cudaFuncAttributePreferredSharedMemoryCarveout = 9,
  cudaFuncAttributeNonPortableClusterSizeAllowed = 11,
};

struct CUstream_st;
using cudaStream_t = CUstream_st*;

struct uint3 {
  unsigned x, y, z;
};
struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
  constexpr dim3(uint3 v) : x(v.x), y(v.y), z(v.z) {}
};

struct alignas(16) uint4 {
  unsigned x, y, z, w;
};
struct alignas(8) uint2 {
  unsigned x, y;
};
struct alignas(16) float4 {
  float x, y, z, w;
};
struct alignas(8) float2 {
  float x, y;
};
inline uint4 make_uint4(unsigned x, unsigned y, unsigned z, unsigned w) { return {x, y, z, w}; }
inline uint2 make_uint2(unsigned x, unsigned y) { return {x, y}; }
inline float4 make_float4(float x, float y, float z, float w) { return {x, y, z, w}; }
inline float2 make_float2(float x, float y) { return {x, y}; }

// The running thread's indices: set by the scheduler before it resumes a thread. (Every read
// after a __syncthreads reloads them: the barrier is a call the compiler cannot see through.)
extern uint3 threadIdx, blockIdx;
extern dim3 blockDim, gridDim;
constexpr int warpSize = 32;

cudaError_t cudaGetLastError();
cudaError_t cudaPeekAtLastError();
cudaError_t cudaGetDevice(int* device);
cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attribute, int device);
const char* cudaGetErrorString(cudaError_t error);

namespace gmk_emu {
cudaError_t set_function_attribute(const void* function, cudaFuncAttribute attribute, int value);
void fault(const char* format, ...) __attribute__((format(printf, 1, 2)));
}
// Records the kernel's dynamic shared memory limit (checked at its launches).
template <typename F>
cudaError_t cudaFuncSetAttribute(F* kernel, cudaFuncAttribute attribute, int value) {
  return gmk_emu::set_function_attribute(reinterpret_cast<const void*>(kernel), attribute, value);
}

namespace gmk_emu {

void fault(const char* format, ...) __attribute__((format(printf, 1, 2)));
[[noreturn]] void trap();
void syncthreads();
// Warp-collective operations: the caller's warp (all of its threads) arrives, then proceeds.
void warp_sync(const char* what);
// Exchanges `bytes` of `value` across the warp; returns in `out` the value of lane `source`
// (the caller's own when source < 0).
void warp_exchange(const void* value, void* out, std::size_t bytes, int source);
// The predicates of the warp's lanes, lane i in bit i.
unsigned warp_ballot(bool predicate);
// Faults unless every lane of the warp passes the same bytes.
void warp_uniform(const void* value, std::size_t bytes, const char* what);
unsigned lane_id();
// The warp_syncs the caller's warp has completed, and a scratch area of the warp (8 KB): what one lane
// computed in a phase, the others can reuse.
std::uint64_t warp_phase();
void* warp_memo(std::size_t bytes);

template <typename T>
void check_aligned(const T* p, std::size_t alignment, const char* what) {
  if (reinterpret_cast<std::uintptr_t>(p) % alignment != 0)
    fault("%s: address %p is not %zu-byte aligned", what, static_cast<const void*>(p), alignment);
}

// --- shared memory ---------------------------------------------------------------------------------
// One per __shared__ declaration (a function-local static): where the variable sits in the arena
// of every block of the launch whose serial number it last saw.
struct SharedTag {
  std::uint64_t launch_serial = 0;
  std::size_t offset = 0;
};
void* shared_variable(SharedTag& tag, std::size_t bytes, std::size_t alignment);
// The block's dynamic shared memory (the launch's bytes, at the start of the arena).
void* dynamic_shared(std::size_t alignment);

template <typename T, std::size_t kAlign>
T& shared(SharedTag& tag) {
  constexpr std::size_t align = kAlign > alignof(T) ? kAlign : alignof(T);
  return *static_cast<T*>(shared_variable(tag, sizeof(T), align));
}

// --- launches --------------------------------------------------------------------------------------
// Runs `body` once per thread of every block, in thread-block clusters of `clusters` blocks; false (and
// cudaGetLastError set) for a bad config.
bool run_grid(dim3 grid, dim3 block, std::size_t dynamic_shared, dim3 clusters, const void* function,
              const char* kernel, const std::function<void()>& body);
cudaError_t max_active_clusters(const void* function, dim3 block, std::size_t dynamic_shared, dim3 clusters,
                                int* count);
// Thread-block clusters (cooperative_groups::cluster_group).
unsigned cluster_block_rank();
unsigned cluster_num_blocks();
void cluster_sync();
// The address in the shared memory of the cluster's block `rank` at the offset of `address` in the caller's.
void* map_shared_rank(const void* address, unsigned rank);

template <auto Kernel, typename... Params>
void launch_with(void (*)(Params...), dim3 grid, dim3 block, std::size_t smem,
                 std::tuple<std::decay_t<Params>...> params) {
  run_grid(grid, block, smem, dim3(1, 1, 1), reinterpret_cast<const void*>(Kernel), __PRETTY_FUNCTION__, [&params] {
    std::tuple<std::decay_t<Params>...> copy = params;  // each thread gets its own copy, as in registers
    std::apply(Kernel, copy);
  });
}

// build.py rewrites `kernel<<<grid, block, smem, stream>>>(args...)` into
// `::gmk_emu::launch<&kernel>(grid, block, smem, stream)(args...)`.
template <auto Kernel>
auto launch(dim3 grid, dim3 block, std::size_t smem = 0, cudaStream_t = nullptr) {
  return [=](auto&&... args) { launch_with<Kernel>(Kernel, grid, block, smem, std::make_tuple(args...)); };
}

// A launch through a variable holding the kernel (build.py: `kernel` names no __global__ function of
// the file): `::gmk_emu::launch_pointer(kernel, grid, block, smem, stream)(args...)`. The launch's name
// has the kernel's parameter types, not its name.
template <typename... Params>
auto launch_pointer(void (*kernel)(Params...), dim3 grid, dim3 block, std::size_t smem = 0, cudaStream_t = nullptr) {
  return [=](auto&&... args) {
    std::tuple<std::decay_t<Params>...> params = std::make_tuple(args...);
    run_grid(grid, block, smem, dim3(1, 1, 1), reinterpret_cast<const void*>(kernel), __PRETTY_FUNCTION__,
             [&params, kernel] {
      std::tuple<std::decay_t<Params>...> copy = params;
      std::apply(kernel, copy);
    });
  };
}

inline float bits_to_float(std::uint32_t bits) {
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}
inline std::uint32_t float_to_bits(float f) {
  std::uint32_t bits;
  std::memcpy(&bits, &f, 4);
  return bits;
}

// float -> binary16, round to nearest even (CUDA's __float2half_rn); NaN -> 0x7fff as on the GPU.
inline std::uint16_t float_to_half_bits(float f) {
  const std::uint32_t x = float_to_bits(f);
  const std::uint32_t sign = (x >> 16) & 0x8000u, magnitude = x & 0x7fffffffu;
  if (magnitude > 0x7f800000u) return 0x7fff;
  if (magnitude >= 0x477ff000u) return static_cast<std::uint16_t>(sign | 0x7c00u);  // >= 65520: inf
  if (magnitude < 0x38800000u) {  // below 2^-14: a subnormal half, in units of 2^-24 (exact scaling)
    const float units = std::nearbyint(bits_to_float(magnitude) * 16777216.0f);  // the current mode: even
    return static_cast<std::uint16_t>(sign | static_cast<std::uint32_t>(units));
  }
  std::uint32_t h = (magnitude - 0x38000000u) >> 13;  // rebias the exponent by 127 - 15
  const std::uint32_t rest = magnitude & 0x1fffu;
  if (rest > 0x1000u || (rest == 0x1000u && (h & 1u))) ++h;
  return static_cast<std::uint16_t>(sign | h);
}

inline float half_bits_to_float(std::uint16_t h) {
  const std::uint32_t sign = static_cast<std::uint32_t>(h & 0x8000u) << 16;
  const std::uint32_t exponent = (h >> 10) & 0x1fu, mantissa = h & 0x3ffu;
  if (exponent == 0) {
    const float v = static_cast<float>(mantissa) * (1.0f / 16777216.0f);
    return sign ? -v : v;
  }
  if (exponent == 31) return bits_to_float(sign | 0x7f800000u | (mantissa << 13));
  return bits_to_float(sign | ((exponent + 112u) << 23) | (mantissa << 13));
}

// float -> bfloat16, round to nearest even (CUDA's __float2bfloat16_rn); NaN -> 0x7fff.
inline std::uint16_t float_to_bfloat16_bits(float f) {
  const std::uint32_t x = float_to_bits(f);
  if ((x & 0x7fffffffu) > 0x7f800000u) return 0x7fff;
  return static_cast<std::uint16_t>((x + 0x7fffu + ((x >> 16) & 1u)) >> 16);
}

}  // namespace gmk_emu

// --- __half and __nv_bfloat16 ----------------------------------------------------------------------
// As in cuda_fp16.h / cuda_bf16.h: construction from float rounds to nearest even, and they
// convert to float. No arithmetic operators (our kernels compute in float).
struct __half {
  unsigned short __x;
  __half() = default;
  __half(float f) : __x(gmk_emu::float_to_half_bits(f)) {}
  __half(double d) : __half(static_cast<float>(d)) {}  // double rounding; CUDA rounds once (kernels never do this)
  operator float() const { return gmk_emu::half_bits_to_float(__x); }
};
struct __nv_bfloat16 {
  unsigned short __x;
  __nv_bfloat16() = default;
  __nv_bfloat16(float f) : __x(gmk_emu::float_to_bfloat16_bits(f)) {}
  __nv_bfloat16(double d) : __nv_bfloat16(static_cast<float>(d)) {}
  operator float() const { return gmk_emu::bits_to_float(static_cast<std::uint32_t>(__x) << 16); }
};
static_assert(sizeof(__half) == 2 && sizeof(__nv_bfloat16) == 2, "16-bit storage");

inline float __half2float(__half h) { return static_cast<float>(h); }
inline __half __float2half(float f) { return __half(f); }
inline __half __float2half_rn(float f) { return __half(f); }
inline float __bfloat162float(__nv_bfloat16 h) { return static_cast<float>(h); }
inline __nv_bfloat16 __float2bfloat16(float f) { return __nv_bfloat16(f); }
inline __nv_bfloat16 __float2bfloat16_rn(float f) { return __nv_bfloat16(f); }

// --- launches with attributes: thread-block clusters ---------------------------------------------------
enum cudaLaunchAttributeID { cudaLaunchAttributeClusterDimension = 4 };
struct cudaLaunchAttributeValue {
  struct {
    unsigned x, y, z;
  } clusterDim;
};
struct cudaLaunchAttribute {
  cudaLaunchAttributeID id;
  cudaLaunchAttributeValue val;
};
struct cudaLaunchConfig_t {
  dim3 gridDim, blockDim;
  std::size_t dynamicSmemBytes;
  cudaStream_t stream;
  cudaLaunchAttribute* attrs;
  unsigned numAttrs;
};

namespace gmk_emu {
// The cluster dimensions of a launch's attributes (1 x 1 x 1 without the attribute).
inline dim3 cluster_dims(const cudaLaunchConfig_t& config) {
  dim3 clusters(1, 1, 1);
  for (unsigned i = 0; i < config.numAttrs; ++i) {
    const cudaLaunchAttribute& attribute = config.attrs[i];
    if (attribute.id == cudaLaunchAttributeClusterDimension)
      clusters = dim3(attribute.val.clusterDim.x, attribute.val.clusterDim.y, attribute.val.clusterDim.z);
  }
  return clusters;
}
}  // namespace gmk_emu

// A launch with clusters (the only attribute emulated). The launch's name has the kernel's parameter types.
template <typename... Params, typename... Args>
cudaError_t cudaLaunchKernelEx(const cudaLaunchConfig_t* config, void (*kernel)(Params...), Args&&... args) {
  std::tuple<std::decay_t<Params>...> params(std::forward<Args>(args)...);
  const bool launched = gmk_emu::run_grid(config->gridDim, config->blockDim, config->dynamicSmemBytes,
                                          gmk_emu::cluster_dims(*config), reinterpret_cast<const void*>(kernel),
                                          __PRETTY_FUNCTION__, [&params, kernel] {
                                            std::tuple<std::decay_t<Params>...> copy = params;
                                            std::apply(kernel, copy);
                                          });
  return launched ? cudaSuccess : cudaGetLastError();
}

template <typename F>
cudaError_t cudaOccupancyMaxActiveClusters(int* clusters, F* kernel, const cudaLaunchConfig_t* config) {
  return gmk_emu::max_active_clusters(reinterpret_cast<const void*>(kernel), config->blockDim,
                                      config->dynamicSmemBytes, gmk_emu::cluster_dims(*config), clusters);
}

// --- intrinsics --------------------------------------------------------------------------------------
inline void __syncthreads() { gmk_emu::syncthreads(); }
inline void __syncwarp(unsigned mask = 0xffffffffu) {
  if (mask != 0xffffffffu) gmk_emu::fault("__syncwarp: only the full mask is emulated");
  gmk_emu::warp_sync("__syncwarp");
}
[[noreturn]] inline void __trap() { gmk_emu::trap(); }

template <typename T>
T __ldg(const T* p) {
  gmk_emu::check_aligned(p, alignof(T), "__ldg");
  return *p;
}

inline float __expf(float v) { return std::exp(v); }
inline float __logf(float v) { return std::log(v); }
inline float __fdividef(float a, float b) { return a / b; }
inline float rsqrtf(float v) { return 1.0f / std::sqrt(v); }
inline float __saturatef(float v) { return v < 0.0f ? 0.0f : (v > 1.0f ? 1.0f : v); }
inline float __int_as_float(int v) { return gmk_emu::bits_to_float(static_cast<std::uint32_t>(v)); }
inline int __float_as_int(float v) { return static_cast<int>(gmk_emu::float_to_bits(v)); }
inline float __uint_as_float(unsigned v) { return gmk_emu::bits_to_float(v); }
inline int __popc(unsigned v) { return __builtin_popcount(v); }
inline unsigned __float_as_uint(float v) { return gmk_emu::float_to_bits(v); }

// atomicAdd on float and double (vector_quantize's statistics): the threads of a launch are fibers of one OS thread
// that switch only at barriers and warp collectives, so a plain read-modify-write is atomic here.
inline float atomicAdd(float* address, float value) {
  const float old = *address;
  *address = old + value;
  return old;
}
inline double atomicAdd(double* address, double value) {
  const double old = *address;
  *address = old + value;
  return old;
}

// Warp shuffles: every lane of the warp must call them together (full mask only).
namespace gmk_emu {
template <typename T>
T shuffle(unsigned mask, T value, int source, const char* what) {
  static_assert(std::is_trivially_copyable<T>::value && sizeof(T) <= 16, "shuffled values are <= 16 bytes");
  if (mask != 0xffffffffu) fault("%s: only the full mask is emulated", what);
  T out;
  warp_exchange(&value, &out, sizeof(T), source);
  return out;
}
inline int segment_lane(int lane, int offset_lane, int width) {  // -1: outside lane's segment
  const int base = lane / width * width;
  return offset_lane >= base && offset_lane < base + width ? offset_lane : -1;
}
}  // namespace gmk_emu

// Bit i: lane i's predicate (every lane of the warp calls it together, full mask only).
inline unsigned __ballot_sync(unsigned mask, int predicate) {
  if (mask != 0xffffffffu) gmk_emu::fault("__ballot_sync: only the full mask is emulated");
  return gmk_emu::warp_ballot(predicate != 0);
}

template <typename T>
T __shfl_sync(unsigned mask, T value, int source, int width = warpSize) {
  const int lane = static_cast<int>(gmk_emu::lane_id());
  return gmk_emu::shuffle(mask, value, lane / width * width + source % width, "__shfl_sync");
}
template <typename T>
T __shfl_down_sync(unsigned mask, T value, unsigned delta, int width = warpSize) {
  const int lane = static_cast<int>(gmk_emu::lane_id());
  return gmk_emu::shuffle(mask, value, gmk_emu::segment_lane(lane, lane + static_cast<int>(delta), width),
                          "__shfl_down_sync");
}
template <typename T>
T __shfl_up_sync(unsigned mask, T value, unsigned delta, int width = warpSize) {
  const int lane = static_cast<int>(gmk_emu::lane_id());
  return gmk_emu::shuffle(mask, value, gmk_emu::segment_lane(lane, lane - static_cast<int>(delta), width),
                          "__shfl_up_sync");
}
template <typename T>
T __shfl_xor_sync(unsigned mask, T value, int lane_mask, int width = warpSize) {
  const int lane = static_cast<int>(gmk_emu::lane_id());
  return gmk_emu::shuffle(mask, value, gmk_emu::segment_lane(lane, lane ^ lane_mask, width), "__shfl_xor_sync");
}

// --- nvcuda::wmma ------------------------------------------------------------------------------------
namespace nvcuda::wmma {

struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
enum layout_t { mem_row_major, mem_col_major };
namespace precision {
struct tf32 {};
}  // namespace precision

namespace detail {
template <typename T>
struct Storage {
  using type = T;
};
template <>
struct Storage<precision::tf32> {
  using type = float;
};

template <typename Use, int M, int N, int K>
struct Shape;
template <int M, int N, int K>
struct Shape<matrix_a, M, N, K> {
  static constexpr int rows = M, cols = K;
};
template <int M, int N, int K>
struct Shape<matrix_b, M, N, K> {
  static constexpr int rows = K, cols = N;
};
template <int M, int N, int K>
struct Shape<accumulator, M, N, K> {
  static constexpr int rows = M, cols = N;
};

// The shapes our kernels use: 16x16x16 for half types, 16x16x8 for TF32.
template <typename T, int M, int N, int K>
constexpr bool supported() {
  if (M != 16 || N != 16) return false;
  if (std::is_same<T, precision::tf32>::value) return K == 8;
  if (std::is_same<T, __half>::value || std::is_same<T, __nv_bfloat16>::value) return K == 16;
  return std::is_same<T, float>::value && (K == 8 || K == 16);  // accumulators
}

// Hardware rules of load/store_matrix_sync: a 256-bit aligned pointer, ldm a multiple of 16
// bytes; and the rows (or columns) must not overlap. Uniform across the warp.
template <typename T>
void check_matrix_args(const T* p, unsigned ldm, unsigned min_ldm, bool row_major, const char* what) {
  gmk_emu::check_aligned(p, 32, what);
  if (ldm * sizeof(T) % 16 != 0) gmk_emu::fault("%s: ldm %u is not a multiple of 16 bytes", what, ldm);
  if (ldm < min_ldm) gmk_emu::fault("%s: ldm %u < %u: the tile's rows overlap", what, ldm, min_ldm);
  unsigned char args[sizeof(p) + sizeof(ldm) + 1];  // no padding bytes to compare
  std::memcpy(args, &p, sizeof(p));
  std::memcpy(args + sizeof(p), &ldm, sizeof(ldm));
  args[sizeof(p) + sizeof(ldm)] = row_major;
  gmk_emu::warp_uniform(args, sizeof(args), what);
}
}  // namespace detail

template <typename Use, int M, int N, int K, typename T, typename Layout = void>
struct fragment {
  static_assert(detail::supported<T, M, N, K>(), "WMMA shape/type not emulated");
  using element_type = typename detail::Storage<T>::type;
  static constexpr int rows = detail::Shape<Use, M, N, K>::rows, cols = detail::Shape<Use, M, N, K>::cols;
  static constexpr int num_elements = rows * cols;  // the whole tile (see the top of this file)
  element_type x[num_elements];                      // row-major, whatever Layout is
};

template <typename Use, int M, int N, int K, typename T, typename Layout, typename V>
void fill_fragment(fragment<Use, M, N, K, T, Layout>& f, const V& value) {
  gmk_emu::warp_sync("wmma::fill_fragment");
  for (auto& e : f.x) e = static_cast<typename fragment<Use, M, N, K, T, Layout>::element_type>(value);
}

// matrix_a / matrix_b: the layout is part of the fragment's type.
template <typename Use, int M, int N, int K, typename T, typename Layout, typename P>
void load_matrix_sync(fragment<Use, M, N, K, T, Layout>& f, const P* p, unsigned ldm) {
  using Frag = fragment<Use, M, N, K, T, Layout>;
  static_assert(std::is_same<Layout, row_major>::value || std::is_same<Layout, col_major>::value,
                "matrix_a/b fragments have a row_major or col_major layout");
  static_assert(std::is_same<P, typename Frag::element_type>::value, "pointer type != fragment element type");
  constexpr bool kRowMajor = std::is_same<Layout, row_major>::value;
  detail::check_matrix_args(p, ldm, kRowMajor ? Frag::cols : Frag::rows, kRowMajor, "wmma::load_matrix_sync");
  for (int r = 0; r < Frag::rows; ++r)
    for (int c = 0; c < Frag::cols; ++c)
      f.x[r * Frag::cols + c] = kRowMajor ? p[std::size_t(r) * ldm + c] : p[std::size_t(c) * ldm + r];
}

template <int M, int N, int K, typename T, typename P>
void load_matrix_sync(fragment<accumulator, M, N, K, T>& f, const P* p, unsigned ldm, layout_t layout) {
  static_assert(std::is_same<P, T>::value, "pointer type != accumulator type");
  const bool row = layout == mem_row_major;
  detail::check_matrix_args(p, ldm, row ? N : M, row, "wmma::load_matrix_sync");
  for (int r = 0; r < M; ++r)
    for (int c = 0; c < N; ++c) f.x[r * N + c] = row ? p[std::size_t(r) * ldm + c] : p[std::size_t(c) * ldm + r];
}

template <int M, int N, int K, typename T, typename P>
void store_matrix_sync(P* p, const fragment<accumulator, M, N, K, T>& f, unsigned ldm, layout_t layout) {
  static_assert(std::is_same<P, T>::value, "pointer type != accumulator type");
  const bool row = layout == mem_row_major;
  detail::check_matrix_args(static_cast<const P*>(p), ldm, row ? N : M, row, "wmma::store_matrix_sync");
  for (int r = 0; r < M; ++r)
    for (int c = 0; c < N; ++c) (row ? p[std::size_t(r) * ldm + c] : p[std::size_t(c) * ldm + r]) = f.x[r * N + c];
}

// TF32 operands: the tensor cores read the top 19 bits of each float; __float_to_tf32 rounds to
// them (to nearest, ties away from zero: cvt.rna.tf32.f32).
inline float tf32_operand(float v) { return gmk_emu::bits_to_float(gmk_emu::float_to_bits(v) & 0xffffe000u); }
inline float __float_to_tf32(float v) {
  const std::uint32_t bits = gmk_emu::float_to_bits(v);
  if ((bits & 0x7f800000u) == 0x7f800000u) return v;  // inf, NaN
  return gmk_emu::bits_to_float((bits + 0x1000u) & 0xffffe000u);
}

// d = a b + c (d may be c). The lanes of a warp hold the same operands (they loaded the same tiles):
// the first lane to get here computes d, and the others reuse it when their operands are identical
// (32 times less work; a lane whose operands differ computes its own).
template <int M, int N, int K, typename TA, typename LA, typename LB, typename TC>
void mma_sync(fragment<accumulator, M, N, K, TC>& d, const fragment<matrix_a, M, N, K, TA, LA>& a,
              const fragment<matrix_b, M, N, K, TA, LB>& b, const fragment<accumulator, M, N, K, TC>& c) {
  gmk_emu::warp_sync("wmma::mma_sync");
  struct Memo {
    std::uint64_t phase;
    decltype(a.x) a_x;
    decltype(b.x) b_x;
    decltype(c.x) c_x, d_x;
  };
  auto* memo = static_cast<Memo*>(gmk_emu::warp_memo(sizeof(Memo)));
  const std::uint64_t phase = gmk_emu::warp_phase();
  if (memo->phase == phase && std::memcmp(memo->a_x, a.x, sizeof(a.x)) == 0 &&
      std::memcmp(memo->b_x, b.x, sizeof(b.x)) == 0 && std::memcmp(memo->c_x, c.x, sizeof(c.x)) == 0) {
    std::memcpy(d.x, memo->d_x, sizeof(d.x));
    return;
  }
  memo->phase = phase;
  std::memcpy(memo->a_x, a.x, sizeof(a.x));
  std::memcpy(memo->b_x, b.x, sizeof(b.x));
  std::memcpy(memo->c_x, c.x, sizeof(c.x));
  constexpr bool kTf32 = std::is_same<TA, precision::tf32>::value;
  float fa[M * K], fb[K * N], out[M * N];
  for (int e = 0; e < M * K; ++e) fa[e] = kTf32 ? tf32_operand(float(a.x[e])) : float(a.x[e]);
  for (int e = 0; e < K * N; ++e) fb[e] = kTf32 ? tf32_operand(float(b.x[e])) : float(b.x[e]);
  for (int m = 0; m < M; ++m)
    for (int n = 0; n < N; ++n) {
      float sum = float(c.x[m * N + n]);
      for (int k = 0; k < K; ++k) sum += fa[m * K + k] * fb[k * N + n];
      out[m * N + n] = sum;
    }
  for (int e = 0; e < M * N; ++e) d.x[e] = static_cast<TC>(out[e]);
  std::memcpy(memo->d_x, d.x, sizeof(d.x));
}

}  // namespace nvcuda::wmma
