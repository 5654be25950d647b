// CUDA kernels of the gated activation. No torch header here (see DESIGN.md): plain pointers,
// sizes and strides in, cudaError_t out.
//
// Fast path ("rows"): x is (outer, 2 * half, inner) with each half of a row contiguous, so the
// a and b halves of row o are two contiguous runs of M = half * inner elements. Each thread
// moves one 16-byte vector of each stream. Anything else takes the strided path.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "gmk/cuda_types.cuh"
#include "gmk/gated.h"

namespace gmk::gated {
namespace {

constexpr int kThreads = 256;
constexpr int kVectorBytes = 16;

enum class Cond { None, Row, Channel };  // cond absent; laid out like x; one value per (o, c)

template <typename T, int kVec>
struct alignas(sizeof(T) * kVec) Vec {
  T v[kVec];
};

template <typename T, int kVec>
__device__ __forceinline__ void load_vec(const T* p, float (&out)[kVec]) {
  const Vec<T, kVec> loaded = *reinterpret_cast<const Vec<T, kVec>*>(p);
#pragma unroll
  for (int j = 0; j < kVec; ++j) out[j] = to_float(loaded.v[j]);
}

template <typename T, int kVec>
__device__ __forceinline__ void store_vec(T* p, const float (&in)[kVec]) {
  Vec<T, kVec> packed;
#pragma unroll
  for (int j = 0; j < kVec; ++j) packed.v[j] = from_float<T>(in[j]);
  *reinterpret_cast<Vec<T, kVec>*>(p) = packed;
}

// Thread u of the rows path owns elements [m, m + kVec) of both halves of row o.
struct RowUnit {
  int64_t o, m;
};

template <int kVec>
__device__ __forceinline__ bool row_unit(const Args& p, RowUnit& unit) {
  const int64_t per_row = p.half * p.inner / kVec;
  const int64_t units = p.outer * per_row;
  const int64_t u = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (u >= units) return false;
  if (units <= UINT32_MAX) {  // 32-bit division is several times cheaper than 64-bit
    const uint32_t o = static_cast<uint32_t>(u) / static_cast<uint32_t>(per_row);
    unit.o = o;
    unit.m = (static_cast<uint32_t>(u) - o * static_cast<uint32_t>(per_row)) * static_cast<int64_t>(kVec);
  } else {
    unit.o = u / per_row;
    unit.m = (u - unit.o * per_row) * kVec;
  }
  return true;
}

template <typename T, int kVec, Cond kCond>
__device__ __forceinline__ void load_row_halves(const Args& p, RowUnit unit, float (&a)[kVec], float (&b)[kVec]) {
  const int64_t half_len = p.half * p.inner;
  const T* xa = static_cast<const T*>(p.x) + unit.o * p.x_strides.outer + unit.m;
  load_vec<T, kVec>(xa, a);
  load_vec<T, kVec>(xa + half_len, b);
  const T* cond = static_cast<const T*>(p.cond);
  if constexpr (kCond == Cond::Row) {
    const T* ca = cond + unit.o * p.cond_strides.outer + unit.m;
    float ta[kVec], tb[kVec];
    load_vec<T, kVec>(ca, ta);
    load_vec<T, kVec>(ca + half_len, tb);
#pragma unroll
    for (int j = 0; j < kVec; ++j) a[j] += ta[j], b[j] += tb[j];
  } else if constexpr (kCond == Cond::Channel) {
    // inner % kVec == 0, so the kVec elements share one channel.
    const int64_t c = unit.m / p.inner;
    const T* ca = cond + unit.o * p.cond_strides.outer + c * p.cond_strides.channel;
    const float ta = to_float(ca[0]);
    const float tb = to_float(ca[p.half * p.cond_strides.channel]);
#pragma unroll
    for (int j = 0; j < kVec; ++j) a[j] += ta, b[j] += tb;
  }
}

template <typename T, int kVec, bool kTanh, Cond kCond>
__global__ void __launch_bounds__(kThreads) forward_rows_kernel(const Args p) {
  RowUnit unit;
  if (!row_unit<kVec>(p, unit)) return;
  float a[kVec], b[kVec], y[kVec];
  load_row_halves<T, kVec, kCond>(p, unit, a, b);
#pragma unroll
  for (int j = 0; j < kVec; ++j) y[j] = forward<kTanh>(a[j], b[j]);
  store_vec<T, kVec>(static_cast<T*>(p.out) + unit.o * p.half * p.inner + unit.m, y);
}

template <typename T, int kVec, bool kTanh, Cond kCond>
__global__ void __launch_bounds__(kThreads) backward_rows_kernel(const Args p) {
  RowUnit unit;
  if (!row_unit<kVec>(p, unit)) return;
  const int64_t half_len = p.half * p.inner;
  float a[kVec], b[kVec], gy[kVec], ga[kVec], gb[kVec];
  load_row_halves<T, kVec, kCond>(p, unit, a, b);
  load_vec<T, kVec>(static_cast<const T*>(p.grad_y) + unit.o * half_len + unit.m, gy);
#pragma unroll
  for (int j = 0; j < kVec; ++j) backward<kTanh>(a[j], b[j], gy[j], ga[j], gb[j]);
  T* grad_a = static_cast<T*>(p.out) + unit.o * 2 * half_len + unit.m;
  store_vec<T, kVec>(grad_a, ga);
  store_vec<T, kVec>(grad_a + half_len, gb);
}

// Strided path: one element per thread, any strides for x and cond (broadcast included).
struct Element {
  int64_t o, c, i, u;
};

__device__ __forceinline__ bool element(const Args& p, Element& e) {
  const int64_t elements = p.outer * p.half * p.inner;
  e.u = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (e.u >= elements) return false;
  if (elements <= UINT32_MAX) {
    const uint32_t u = e.u, inner = p.inner, half = p.half;
    const uint32_t row = u / inner;
    e.i = u - row * inner;
    e.o = row / half;
    e.c = row - static_cast<uint32_t>(e.o) * half;
  } else {
    const int64_t row = e.u / p.inner;
    e.i = e.u - row * p.inner;
    e.o = row / p.half;
    e.c = row - e.o * p.half;
  }
  return true;
}

template <typename T>
__device__ __forceinline__ void load_strided_halves(const Args& p, const Element& e, float& a, float& b) {
  const Strides3& s = p.x_strides;
  const T* x = static_cast<const T*>(p.x) + e.o * s.outer + e.c * s.channel + e.i * s.inner;
  a = to_float(x[0]);
  b = to_float(x[p.half * s.channel]);
  if (p.cond) {
    const Strides3& t = p.cond_strides;
    const T* cond = static_cast<const T*>(p.cond) + e.o * t.outer + e.c * t.channel + e.i * t.inner;
    a += to_float(cond[0]);
    b += to_float(cond[p.half * t.channel]);
  }
}

template <typename T, bool kTanh>
__global__ void __launch_bounds__(kThreads) forward_strided_kernel(const Args p) {
  Element e;
  if (!element(p, e)) return;
  float a, b;
  load_strided_halves<T>(p, e, a, b);
  static_cast<T*>(p.out)[e.u] = from_float<T>(forward<kTanh>(a, b));
}

template <typename T, bool kTanh>
__global__ void __launch_bounds__(kThreads) backward_strided_kernel(const Args p) {
  Element e;
  if (!element(p, e)) return;
  float a, b, ga, gb;
  load_strided_halves<T>(p, e, a, b);
  backward<kTanh>(a, b, to_float(static_cast<const T*>(p.grad_y)[e.u]), ga, gb);
  T* grad_a = static_cast<T*>(p.out) + (e.o * 2 * p.half + e.c) * p.inner + e.i;
  grad_a[0] = from_float<T>(ga);
  grad_a[p.half * p.inner] = from_float<T>(gb);
}

bool aligned(const void* ptr) { return reinterpret_cast<uintptr_t>(ptr) % kVectorBytes == 0; }

// Which rows-path variant fits these tensors, if any.
template <int kVec>
bool rows_path(const Args& p, Cond& cond) {
  const bool x_rows = p.x_strides.inner == 1 && p.x_strides.channel == p.inner;
  if (!x_rows || (p.half * p.inner) % kVec || p.x_strides.outer % kVec || !aligned(p.x)) return false;
  if (!aligned(p.out) || (p.grad_y && !aligned(p.grad_y))) return false;  // grad_y may be a view at any offset
  if (!p.cond) return cond = Cond::None, true;
  const Strides3& t = p.cond_strides;
  if (t.inner == 1 && t.channel == p.inner && t.outer % kVec == 0 && aligned(p.cond)) return cond = Cond::Row, true;
  if (t.inner == 0 && p.inner % kVec == 0) return cond = Cond::Channel, true;
  return false;
}

int64_t blocks_for(int64_t work) { return (work + kThreads - 1) / kThreads; }

template <typename T, bool kTanh, bool kBackward>
cudaError_t launch_typed(const Args& p, cudaStream_t stream) {
  constexpr int kVec = kVectorBytes / sizeof(T);
  const int64_t elements = p.outer * p.half * p.inner;
  if (elements == 0) return cudaSuccess;
  Cond cond;
  if (rows_path<kVec>(p, cond)) {
    const dim3 grid(blocks_for(elements / kVec));
    switch (cond) {
#define GMK_ROWS_CASE(C)                                                                         \
  case C:                                                                                        \
    if constexpr (kBackward) backward_rows_kernel<T, kVec, kTanh, C><<<grid, kThreads, 0, stream>>>(p); \
    else forward_rows_kernel<T, kVec, kTanh, C><<<grid, kThreads, 0, stream>>>(p);                \
    break;
      GMK_ROWS_CASE(Cond::None)
      GMK_ROWS_CASE(Cond::Row)
      GMK_ROWS_CASE(Cond::Channel)
#undef GMK_ROWS_CASE
    }
  } else {
    const dim3 grid(blocks_for(elements));
    if constexpr (kBackward) backward_strided_kernel<T, kTanh><<<grid, kThreads, 0, stream>>>(p);
    else forward_strided_kernel<T, kTanh><<<grid, kThreads, 0, stream>>>(p);
  }
  return cudaGetLastError();
}

template <bool kBackward>
cudaError_t launch(const Args& p, cudaStream_t stream) {
  return with_cuda_type(p.dtype, [&](auto tag) {
    using T = decltype(tag);
    return p.tanh ? launch_typed<T, true, kBackward>(p, stream) : launch_typed<T, false, kBackward>(p, stream);
  });
}

}  // namespace

cudaError_t forward_cuda(const Args& args, cudaStream_t stream) { return launch<false>(args, stream); }
cudaError_t backward_cuda(const Args& args, cudaStream_t stream) { return launch<true>(args, stream); }

}  // namespace gmk::gated
