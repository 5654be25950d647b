// C entry points of the emulated CUDA launchers, for ctypes: raw pointers, sizes and strides in,
// the launcher's cudaError_t out. They fill the argument structs as the _ops.cpp files do; the
// tests prepare the tensors (layouts, packed weights) as the ops do. No torch header.
#include <cstdint>

#include "gated/gated.h"
#include "logistic_mixture/logistic_mixture.h"
#include "masked_conv/masked_conv.h"

namespace {

gmk::Strides3 strides3(const int64_t* s) { return s ? gmk::Strides3{s[0], s[1], s[2]} : gmk::Strides3{}; }

// geometry: batch, in_channels, out_channels, height, width, kernel_h, kernel_w, pad_top, pad_left,
// mask (0 none, 1 A, 2 B), color_groups.
gmk::masked_conv::Geometry geometry_of(const int64_t* g) {
  gmk::masked_conv::Geometry out;
  out.batch = g[0];
  out.in_channels = g[1];
  out.out_channels = g[2];
  out.height = g[3];
  out.width = g[4];
  out.kernel_h = g[5];
  out.kernel_w = g[6];
  out.pad_top = g[7];
  out.pad_left = g[8];
  out.mask = static_cast<gmk::masked_conv::Mask>(g[9]);
  out.color_groups = g[10];
  return out;
}

}  // namespace

extern "C" {

int gmk_emu_gated(int backward, int64_t outer, int64_t half, int64_t inner, int tanh, int dtype, const void* x,
                  const int64_t* x_strides, const void* cond, const int64_t* cond_strides, const void* grad_y,
                  void* out) {
  gmk::gated::Args args;
  args.outer = outer;
  args.half = half;
  args.inner = inner;
  args.tanh = tanh != 0;
  args.dtype = static_cast<gmk::DType>(dtype);
  args.x = x;
  args.x_strides = strides3(x_strides);
  args.cond = cond;
  args.cond_strides = strides3(cond_strides);
  args.grad_y = grad_y;
  args.out = out;
  return backward ? gmk::gated::backward_cuda(args, nullptr) : gmk::gated::forward_cuda(args, nullptr);
}

// op: 0 nll, 1 nll backward, 2 sample. sizes: batch, channels, mixtures, positions, num_bins.
int gmk_emu_logistic_mixture(int op, const int64_t* sizes, double log_scale_min, int dtype, const void* params,
                             const int64_t* params_strides, const void* x, const int64_t* x_strides,
                             const void* grad_nll, const int64_t* grad_nll_strides, const void* gumbel_u,
                             const int64_t* gumbel_u_strides, const void* logistic_u,
                             const int64_t* logistic_u_strides, void* out) {
  namespace lm = gmk::logistic_mixture;
  lm::Args args;
  args.batch = sizes[0];
  args.channels = sizes[1];
  args.mixtures = sizes[2];
  args.positions = sizes[3];
  args.num_bins = sizes[4];
  args.log_scale_min = log_scale_min;
  args.dtype = static_cast<gmk::DType>(dtype);
  args.params = params;
  args.params_strides = strides3(params_strides);
  args.x = x;
  args.x_strides = strides3(x_strides);
  args.grad_nll = grad_nll;
  args.grad_nll_strides = strides3(grad_nll_strides);
  args.gumbel_u = gumbel_u;
  args.gumbel_u_strides = strides3(gumbel_u_strides);
  args.logistic_u = logistic_u;
  args.logistic_u_strides = strides3(logistic_u_strides);
  args.out = out;
  switch (op) {
    case 0: return lm::nll_cuda(args, nullptr);
    case 1: return lm::nll_backward_cuda(args, nullptr);
    case 2: return lm::sample_cuda(args, nullptr);
  }
  return cudaErrorInvalidValue;
}

int gmk_emu_tap_gemm(const int64_t* geometry, int dtype, int allow_tf32, int reflect, int out_channels_last,
                     int64_t live_taps, int64_t reduce_channels, int64_t out_channels, const void* a, const void* b,
                     const void* bias, void* out) {
  gmk::masked_conv::TapGemmArgs args;
  args.geometry = geometry_of(geometry);
  args.dtype = static_cast<gmk::DType>(dtype);
  args.allow_tf32 = allow_tf32 != 0;
  args.reflect = reflect != 0;
  args.out_channels_last = out_channels_last != 0;
  args.live_taps = live_taps;
  args.reduce_channels = reduce_channels;
  args.out_channels = out_channels;
  args.a = a;
  args.b = b;
  args.bias = bias;
  args.out = out;
  return gmk::masked_conv::tap_gemm_cuda(args, nullptr);
}

int gmk_emu_weight_grad(const int64_t* geometry, int dtype, int allow_tf32, int64_t live_taps, int64_t splits,
                        int64_t positions_per_split, const void* x, const void* grad_out, float* partial) {
  gmk::masked_conv::WeightGradArgs args;
  args.geometry = geometry_of(geometry);
  args.dtype = static_cast<gmk::DType>(dtype);
  args.allow_tf32 = allow_tf32 != 0;
  args.live_taps = live_taps;
  args.splits = splits;
  args.positions_per_split = positions_per_split;
  args.x = x;
  args.grad_out = grad_out;
  args.partial = partial;
  return gmk::masked_conv::weight_grad_cuda(args, nullptr);
}

}  // extern "C"
