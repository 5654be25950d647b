// CPU kernels of vector_quantize. The search takes kRows positions at a time and walks the codebook in
// tiles of kTile codes: the tile's dot products with the positions come from a register-blocked GEMM
// micro-kernel over a transposed codebook (vectorised along the codes, compiled per instruction set with
// GMK_CPU_CLONES); a running argmin per lane of kVec codes, reduced over the lanes at the end, keeps each
// position's best code (gmk/vector_quantize.h). Memory: kRows x (dim + kTile) per task and the (dim, codes)
// transposed codebook, never positions x codes. The statistics split the code dimension over the tasks,
// so that each sum has one writer and adds its positions in order.
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <limits>
#include <vector>

#include "gmk/aten.h"
#include "gmk/cpu_math.h"
#include "gmk/vector_quantize.h"

namespace gmk::vector_quantize {
namespace {

constexpr int64_t kRows = 8;    // positions searched together: each tile of the codebook is read once per kRows
constexpr int64_t kTile = 128;  // codes per tile: kRows x kTile dot products stay in L1
constexpr int64_t kGrainMacs = int64_t{1} << 20;  // at least this many multiply-adds per parallel task

constexpr int64_t kVec = 32;  // codes per register block: kRows x kVec accumulators stay in registers

// dots[r * kTile + j] = sum_d rows[r * dim + d] * codes_t[d * stride + j] for j < kVec: a GEMM micro-kernel
// (per d, one row of kVec codes loaded, each position's element broadcast), summed over d in order.
template <typename T>
GMK_CPU_INLINE void block_dots(const T* rows, int64_t dim, const T* codes_t, int64_t stride, T* dots) {
  T acc[kRows][kVec] = {};
  for (int64_t d = 0; d < dim; ++d) {
    const T* c = codes_t + d * stride;
    for (int64_t r = 0; r < kRows; ++r) {
      const T v = rows[r * dim + d];
      for (int64_t j = 0; j < kVec; ++j) acc[r][j] += v * c[j];
    }
  }
  for (int64_t r = 0; r < kRows; ++r) {
    for (int64_t j = 0; j < kVec; ++j) dots[r * kTile + j] = acc[r][j];
  }
}

// Lane j of row r keeps the lowest score among the codes j, j + kVec, ... of the row's tiles so far and that
// code (strictly lower wins: the lowest code of the lane on ties); compares and blends, which vectorise.
// norms holds the tile's n codes' norms, +inf past the codebook's end (those codes never win).
template <typename T>
GMK_CPU_INLINE void lane_argmin(const T* dots, const T* norms, int64_t k0, int64_t n, T* lane_best,
                                int64_t* lane_code) {
  for (int64_t r = 0; r < kRows; ++r) {
    for (int64_t k = 0; k < n; k += kVec) {
      for (int64_t j = 0; j < kVec; ++j) {
        const T s = score(norms[k + j], dots[r * kTile + k + j]);
        const bool lower = s < lane_best[r * kVec + j];
        lane_best[r * kVec + j] = lower ? s : lane_best[r * kVec + j];
        lane_code[r * kVec + j] = lower ? k0 + k + j : lane_code[r * kVec + j];
      }
    }
  }
}

// One tile of n codes (a multiple of kVec: the codebook is padded) against the kRows positions.
template <typename T>
GMK_CPU_INLINE void search_tile(const T* rows, int64_t dim, const T* codes_t, int64_t stride, const T* norms,
                                int64_t k0, int64_t n, T* dots, T* lane_best, int64_t* lane_code) {
  for (int64_t k = 0; k < n; k += kVec) block_dots(rows, dim, codes_t + k, stride, dots + k);
  lane_argmin(dots, norms, k0, n, lane_best, lane_code);
}

GMK_CPU_CLONES void search_tile_kernel(const float* rows, int64_t dim, const float* codes_t, int64_t stride,
                                       const float* norms, int64_t k0, int64_t n, float* dots, float* lane_best,
                                       int64_t* lane_code) {
  search_tile(rows, dim, codes_t, stride, norms, k0, n, dots, lane_best, lane_code);
}
void search_tile_kernel(const double* rows, int64_t dim, const double* codes_t, int64_t stride, const double* norms,
                        int64_t k0, int64_t n, double* dots, double* lane_best, int64_t* lane_code) {
  search_tile(rows, dim, codes_t, stride, norms, k0, n, dots, lane_best, lane_code);
}

// The lanes' winner: the lowest score, the lowest code among equal scores (index 0 when no score is finite
// and below +inf, as the running argmin of one lane).
template <typename T>
int64_t best_of_lanes(const T* lane_best, const int64_t* lane_code) {
  T best = lane_best[0];
  int64_t code = lane_code[0];
  for (int64_t j = 1; j < kVec; ++j) {
    if (lane_best[j] < best || (lane_best[j] == best && lane_code[j] < code)) {
      best = lane_best[j];
      code = lane_code[j];
    }
  }
  return code;
}

// The position's first element in x's (outer, dim, inner) layout; its elements are inner apart.
int64_t position_base(const SearchArgs& a, int64_t p) { return (p / a.inner) * a.dim * a.inner + p % a.inner; }

template <typename scalar_t>
void search_typed(const SearchArgs& a) {
  using T = at::opmath_type<scalar_t>;
  const int64_t dim = a.dim, codes = a.codes, positions = a.outer * a.inner;
  const auto* x = static_cast<const scalar_t*>(a.x);
  const auto* codebook = static_cast<const scalar_t*>(a.codebook);
  auto* norms = static_cast<T*>(a.code_norms);
  const int64_t padded = (codes + kVec - 1) / kVec * kVec;
  std::vector<T> codes_t(static_cast<size_t>(dim * padded), T(0));  // (dim, padded): zeros past the codes
  std::vector<T> padded_norms(static_cast<size_t>(padded), std::numeric_limits<T>::infinity());
  for (int64_t k = 0; k < codes; ++k) {
    T norm = T(0);
    for (int64_t d = 0; d < dim; ++d) {
      const T c = static_cast<T>(codebook[k * dim + d]);
      codes_t[d * padded + k] = c;
      norm += c * c;
    }
    norms[k] = norm;
    padded_norms[k] = norm;
  }
  const int64_t blocks = (positions + kRows - 1) / kRows;
  const int64_t grain = std::max<int64_t>(1, kGrainMacs / std::max<int64_t>(1, kRows * codes * dim));
  at::parallel_for(0, blocks, grain, [&](int64_t begin, int64_t end) {
    std::vector<T> rows(static_cast<size_t>(kRows * dim)), dots(static_cast<size_t>(kRows * kTile));
    for (int64_t block = begin; block < end; ++block) {
      const int64_t p0 = block * kRows, count = std::min(kRows, positions - p0);
      std::fill(rows.begin(), rows.end(), T(0));
      for (int64_t r = 0; r < count; ++r) {
        const int64_t base = position_base(a, p0 + r);
        for (int64_t d = 0; d < dim; ++d) rows[r * dim + d] = static_cast<T>(x[base + d * a.inner]);
      }
      std::vector<T> lane_best(static_cast<size_t>(kRows * kVec), std::numeric_limits<T>::infinity());
      std::vector<int64_t> lane_code(static_cast<size_t>(kRows * kVec), 0);
      for (int64_t k0 = 0; k0 < codes; k0 += kTile) {
        const int64_t n = (std::min(kTile, codes - k0) + kVec - 1) / kVec * kVec;
        search_tile_kernel(rows.data(), dim, codes_t.data() + k0, padded, padded_norms.data() + k0, k0, n,
                           dots.data(), lane_best.data(), lane_code.data());
      }
      for (int64_t r = 0; r < count; ++r) {
        const int64_t p = p0 + r, base = position_base(a, p);
        const int64_t k = best_of_lanes(lane_best.data() + r * kVec, lane_code.data() + r * kVec);
        T distance = T(0);
        for (int64_t d = 0; d < dim; ++d) {
          const scalar_t c = codebook[k * dim + d];
          static_cast<scalar_t*>(a.quantized)[base + d * a.inner] = c;
          const T difference = rows[r * dim + d] - static_cast<T>(c);
          distance += difference * difference;
        }
        a.indices[p] = k;
        static_cast<T*>(a.distance)[p] = distance;
      }
    }
  });
}

template <typename scalar_t>
void statistics_typed(const StatisticsArgs& a) {
  using T = at::opmath_type<scalar_t>;
  const int64_t dim = a.dim, inner = a.inner, positions = a.outer * a.inner;
  const auto* x = static_cast<const scalar_t*>(a.x);
  auto* counts = static_cast<T*>(a.counts);
  auto* sums = static_cast<T*>(a.sums);
  // Counted in integers and summed in double, rounded once: a float32 running count or sum stops growing at
  // 2^24 (2^24 + 1 rounds back to 2^24), which one code's positions pass in a large batch.
  std::vector<int64_t> counted(static_cast<size_t>(a.codes), 0);
  std::vector<double> summed(static_cast<size_t>(a.codes * dim), 0.0);
  for (int64_t p = 0; p < positions; ++p) {
    const int64_t k = a.indices[p];
    TORCH_CHECK_VALUE(k >= 0 && k < a.codes, "gmkernels::vector_quantize_statistics: indices must be in [0, ",
                      a.codes, "), got ", k);
    ++counted[k];
  }
  for (int64_t k = 0; k < a.codes; ++k) counts[k] = static_cast<T>(counted[k]);
  const int64_t grain = std::max<int64_t>(1, (int64_t{1} << 16) / std::max<int64_t>(1, positions));
  at::parallel_for(0, dim, grain, [&](int64_t begin, int64_t end) {
    for (int64_t d = begin; d < end; ++d) {
      for (int64_t o = 0; o < a.outer; ++o) {
        const scalar_t* row = x + (o * dim + d) * inner;
        const int64_t* codes_of = a.indices + o * inner;
        for (int64_t i = 0; i < inner; ++i) summed[codes_of[i] * dim + d] += static_cast<double>(row[i]);
      }
      for (int64_t k = 0; k < a.codes; ++k) sums[k * dim + d] = static_cast<T>(summed[k * dim + d]);
    }
  });
}

}  // namespace

void search_cpu(const SearchArgs& args) {
  with_scalar_type(args.dtype, [&](auto tag) { search_typed<decltype(tag)>(args); });
}

void statistics_cpu(const StatisticsArgs& args) {
  with_scalar_type(args.dtype, [&](auto tag) { statistics_typed<decltype(tag)>(args); });
}

}  // namespace gmk::vector_quantize
