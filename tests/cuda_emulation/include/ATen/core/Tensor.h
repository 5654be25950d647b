// Stand-in for ATen's <ATen/core/Tensor.h> in the CPU emulation: the family headers that declare
// their CPU entry points with tensors (invconv.h, causal_conv.h) need only the name; the emulation
// never calls them.
#pragma once
namespace at {
class Tensor;
}  // namespace at
