// CPU kernels of vector_quantize. The search takes kRows positions at a time and walks the codebook in
// tiles of kTile codes: the tile's dot products with the positions are axpys along the codes of a
// transposed codebook (they vectorise, compiled per instruction set with GMK_CPU_CLONES), then a running
// argmin keeps each position's best code (gmk/vector_quantize.h). Memory: kRows x (dim + kTile) per task
// and the (dim, codes) transposed codebook, never positions x codes. The statistics split the code
// dimension over the tasks, so that each sum has one writer and adds its positions in order.
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

// dots[r * kTile + k] = sum_d rows[r * dim + d] * codes_t[d * stride + k] for k < n, as axpys along k.
template <typename T>
GMK_CPU_INLINE void tile_dots(const T* rows, int64_t dim, const T* codes_t, int64_t stride, int64_t n, T* dots) {
  for (int64_t r = 0; r < kRows; ++r) {
    for (int64_t k = 0; k < n; ++k) dots[r * kTile + k] = T(0);
  }
  for (int64_t d = 0; d < dim; ++d) {
    const T* c = codes_t + d * stride;
    for (int64_t r = 0; r < kRows; ++r) {
      const T v = rows[r * dim + d];
      T* acc = dots + r * kTile;
      for (int64_t k = 0; k < n; ++k) acc[k] += v * c[k];
    }
  }
}

GMK_CPU_CLONES void dots_kernel(const float* rows, int64_t dim, const float* codes_t, int64_t stride, int64_t n,
                                float* dots) {
  tile_dots(rows, dim, codes_t, stride, n, dots);
}
void dots_kernel(const double* rows, int64_t dim, const double* codes_t, int64_t stride, int64_t n, double* dots) {
  tile_dots(rows, dim, codes_t, stride, n, dots);
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
  std::vector<T> codes_t(static_cast<size_t>(dim * codes));  // (dim, codes)
  for (int64_t k = 0; k < codes; ++k) {
    T norm = T(0);
    for (int64_t d = 0; d < dim; ++d) {
      const T c = static_cast<T>(codebook[k * dim + d]);
      codes_t[d * codes + k] = c;
      norm += c * c;
    }
    norms[k] = norm;
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
      T best[kRows];
      int64_t best_code[kRows];
      std::fill(best, best + kRows, std::numeric_limits<T>::infinity());
      std::fill(best_code, best_code + kRows, int64_t{0});
      for (int64_t k0 = 0; k0 < codes; k0 += kTile) {
        const int64_t n = std::min(kTile, codes - k0);
        dots_kernel(rows.data(), dim, codes_t.data() + k0, codes, n, dots.data());
        for (int64_t r = 0; r < count; ++r) {
          for (int64_t k = 0; k < n; ++k) {
            keep_lower(score(norms[k0 + k], dots[r * kTile + k]), k0 + k, best[r], best_code[r]);
          }
        }
      }
      for (int64_t r = 0; r < count; ++r) {
        const int64_t p = p0 + r, base = position_base(a, p), k = best_code[r];
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
  std::fill(counts, counts + a.codes, T(0));
  std::fill(sums, sums + a.codes * dim, T(0));
  for (int64_t p = 0; p < positions; ++p) {
    const int64_t k = a.indices[p];
    TORCH_CHECK_VALUE(k >= 0 && k < a.codes, "gmkernels::vector_quantize_statistics: indices must be in [0, ",
                      a.codes, "), got ", k);
    counts[k] += T(1);
  }
  const int64_t grain = std::max<int64_t>(1, (int64_t{1} << 16) / std::max<int64_t>(1, positions));
  at::parallel_for(0, dim, grain, [&](int64_t begin, int64_t end) {
    for (int64_t d = begin; d < end; ++d) {
      for (int64_t o = 0; o < a.outer; ++o) {
        const scalar_t* row = x + (o * dim + d) * inner;
        const int64_t* codes_of = a.indices + o * inner;
        for (int64_t i = 0; i < inner; ++i) sums[codes_of[i] * dim + d] += static_cast<T>(row[i]);
      }
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
