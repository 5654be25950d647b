// Between ATen and the kernels' plain types: for *_ops.cpp and *_cpu.cpp files only (it includes
// torch headers, which .cu files must not).
#pragma once
#include <ATen/core/Tensor.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include "gmk/common.h"

namespace gmk {

// The kernels' DType of a floating-point tensor; a TypeError naming op and argument otherwise.
inline DType to_dtype(const char* op, const char* name, const at::Tensor& t) {
  switch (t.scalar_type()) {
    case at::kFloat: return DType::Float32;
    case at::kDouble: return DType::Float64;
    case at::kHalf: return DType::Float16;
    case at::kBFloat16: return DType::BFloat16;
    default:
      TORCH_CHECK_TYPE(false, op, ": ", name, " must be float32, float16, bfloat16 or float64, got ",
                       t.scalar_type());
  }
}

// Calls fn with a value of the C++ type of dtype (c10::Half and c10::BFloat16 for the half types).
template <typename Fn>
void with_scalar_type(DType dtype, Fn fn) {
  switch (dtype) {
    case DType::Float32: return fn(float{});
    case DType::Float64: return fn(double{});
    case DType::Float16: return fn(c10::Half{});
    case DType::BFloat16: return fn(c10::BFloat16{});
  }
}

}  // namespace gmk
