// C entry points of the emulated CUDA launchers, for ctypes: raw pointers, sizes and strides in,
// the launcher's cudaError_t out. They fill the argument structs as the _ops.cpp files do; the
// tests prepare the tensors (layouts, packed weights) as the ops do. No torch header.
#include <cstdint>
#include <cmath>
#include <vector>

#include "gmk/gated.h"
#include "gmk/logistic_mixture.h"
#include "gmk/masked_conv.h"

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

// --- flows and WaveNet ------------------------------------------------------------------------------
#include "gmk/actnorm.h"
#include "gmk/causal_conv.h"
#include "gmk/coupling.h"
#include "gmk/invconv.h"

extern "C" {

int64_t gmk_emu_actnorm_parts(int64_t outer, int64_t channels, int64_t inner) {
  return gmk::actnorm::backward_parts_cuda(outer, channels, inner);
}

// bias, log_scale (channels) float; backward: grad_out contiguous, sums (channels, parts, 2) float.
int gmk_emu_actnorm(int backward, int64_t outer, int64_t channels, int64_t inner, int reverse, int dtype,
                    const void* in, const int64_t* in_strides, const float* bias, const float* log_scale,
                    const void* grad_out, void* out, float* sums, int64_t parts) {
  gmk::actnorm::Args args;
  args.outer = outer;
  args.channels = channels;
  args.inner = inner;
  args.in = in;
  args.in_strides = strides3(in_strides);
  args.bias = bias;
  args.log_scale = log_scale;
  args.grad_out = grad_out;
  args.out = out;
  args.sums = sums;
  args.parts = parts;
  args.reverse = reverse != 0;
  args.dtype = static_cast<gmk::DType>(dtype);
  return backward ? gmk::actnorm::backward_cuda(args, nullptr) : gmk::actnorm::forward_cuda(args, nullptr);
}

// sizes: outer, half, inner (and width, for a checkerboard); transform 0 glow, 1 realnvp, 2 additive;
// layout 0 halves, 1 interleaved, 2 checkerboard, 3 checkerboard_odd.
int64_t gmk_emu_coupling_workspace(int64_t outer, int64_t half, int64_t inner, int transform) {
  gmk::coupling::Args args;
  args.outer = outer;
  args.half = half;
  args.inner = inner;
  args.transform = static_cast<gmk::coupling::Transform>(transform);
  return gmk::coupling::cuda_workspace_floats(args);
}

int gmk_emu_coupling(int backward, const int64_t* sizes, int transform, int layout, int reverse, int dtype,
                     const void* x, const int64_t* x_strides, const void* h, const int64_t* h_strides,
                     const void* grad_y, const float* grad_logdet, void* out, void* grad_h, float* logdet,
                     float* workspace) {
  gmk::coupling::Args args;
  args.outer = sizes[0];
  args.half = sizes[1];
  args.inner = sizes[2];
  args.x = x;
  args.x_strides = strides3(x_strides);
  args.h = h;
  args.h_strides = strides3(h_strides);
  args.grad_y = grad_y;
  args.grad_logdet = grad_logdet;
  args.out = out;
  args.grad_h = grad_h;
  args.logdet = logdet;
  args.workspace = workspace;
  args.transform = static_cast<gmk::coupling::Transform>(transform);
  args.layout = static_cast<gmk::coupling::Layout>(layout);
  if (gmk::coupling::is_checkerboard(args.layout)) args.width = sizes[3];
  args.reverse = reverse != 0;
  args.dtype = static_cast<gmk::DType>(dtype);
  return backward ? gmk::coupling::backward_cuda(args, nullptr) : gmk::coupling::forward_cuda(args, nullptr);
}

int gmk_emu_conv1x1_fits(int64_t in_channels, int64_t out_channels) {
  return gmk::invconv::conv1x1_cuda_fits(in_channels, out_channels);
}

// weight (out_channels, in_channels) and bias (or null) contiguous float.
int gmk_emu_conv1x1(int64_t outer, int64_t in_channels, int64_t out_channels, int64_t inner, int dtype, const void* x,
                    const int64_t* x_strides, const float* weight, const float* bias, void* out) {
  gmk::invconv::Args args;
  args.outer = outer;
  args.in_channels = in_channels;
  args.out_channels = out_channels;
  args.inner = inner;
  args.x = x;
  args.x_strides = strides3(x_strides);
  args.weight = weight;
  args.bias = bias;
  args.out = out;
  args.dtype = static_cast<gmk::DType>(dtype);
  return gmk::invconv::conv1x1_cuda(args, nullptr);
}

// sizes: batch, in_channels, out_channels, length, kernel_size, dilation; w_strides: out, in, tap.
int gmk_emu_causal_conv(const int64_t* sizes, int sign, int dtype, const void* in, const int64_t* in_strides,
                        const void* weight, const int64_t* w_strides, const void* bias, void* out) {
  gmk::causal_conv::ConvArgs args;
  args.batch = sizes[0];
  args.in_channels = sizes[1];
  args.out_channels = sizes[2];
  args.length = sizes[3];
  args.kernel_size = sizes[4];
  args.dilation = sizes[5];
  args.sign = sign;
  args.in = in;
  args.in_strides = strides3(in_strides);
  args.weight = weight;
  args.w_out_stride = w_strides[0];
  args.w_in_stride = w_strides[1];
  args.w_tap_stride = w_strides[2];
  args.bias = bias;
  args.out = out;
  args.dtype = static_cast<gmk::DType>(dtype);
  return gmk::causal_conv::conv_cuda(args, nullptr);
}

// sizes: batch, in_channels, out_channels, length, kernel_size, dilation, splits.
int gmk_emu_causal_conv_weight_grad(const int64_t* sizes, int dtype, const void* grad_out, const void* x,
                                    const int64_t* x_strides, float* partial) {
  gmk::causal_conv::WeightGradArgs args;
  args.batch = sizes[0];
  args.in_channels = sizes[1];
  args.out_channels = sizes[2];
  args.length = sizes[3];
  args.kernel_size = sizes[4];
  args.dilation = sizes[5];
  args.splits = sizes[6];
  args.grad_out = grad_out;
  args.x = x;
  args.x_strides = strides3(x_strides);
  args.partial = partial;
  args.dtype = static_cast<gmk::DType>(dtype);
  return gmk::causal_conv::weight_grad_cuda(args, nullptr);
}

// sizes: batch, residual, skip_channels, length, kernel_size, dilation. tensors: x, cond, conv_weight,
// conv_bias, res_weight, res_bias, skip_weight, skip_bias, x_next, skip, grad_x_next, grad_skip, grad_h, z
// (null where absent); backward: layer_grad_h_cuda.
int gmk_emu_wavenet_layer(int backward, const int64_t* sizes, double residual_scale, int dtype,
                          const int64_t* x_strides, const int64_t* cond_strides, void* const* tensors) {
  gmk::causal_conv::LayerArgs args;
  args.batch = sizes[0];
  args.residual = sizes[1];
  args.skip_channels = sizes[2];
  args.length = sizes[3];
  args.kernel_size = sizes[4];
  args.dilation = sizes[5];
  args.residual_scale = static_cast<float>(residual_scale);
  args.x = tensors[0];
  args.x_strides = strides3(x_strides);
  args.cond = tensors[1];
  args.cond_strides = strides3(cond_strides);
  args.conv_weight = tensors[2];
  args.conv_bias = tensors[3];
  args.res_weight = tensors[4];
  args.res_bias = tensors[5];
  args.skip_weight = tensors[6];
  args.skip_bias = tensors[7];
  args.x_next = tensors[8];
  args.skip = tensors[9];
  args.grad_x_next = tensors[10];
  args.grad_skip = tensors[11];
  args.grad_h = tensors[12];
  args.z = tensors[13];
  args.dtype = static_cast<gmk::DType>(dtype);
  return backward ? gmk::causal_conv::layer_grad_h_cuda(args, nullptr) : gmk::causal_conv::layer_cuda(args, nullptr);
}

// The largest R the op lets the layer kernels take on the emulated device; -1 on error.
int64_t gmk_emu_max_layer_residual(int backward) {
  int64_t max_residual = 0;
  return gmk::causal_conv::max_layer_residual_cuda(backward != 0, &max_residual) == cudaSuccess ? max_residual : -1;
}

}  // extern "C"

// --- WaveNet generation --------------------------------------------------------------------------------
#include "gmk/wavenet_generate.h"

extern "C" {

// plan_cuda's choice; out: cluster_size, batch_per_block, shared_bytes, weights_in_shared. Returns 0, or
// -1 when the configuration does not fit (the op raises plan.error).
int gmk_emu_wavenet_plan(const int64_t* sizes, int64_t element_size, int mixture, int64_t device_shared_bytes,
                         int64_t multiprocessors, int64_t compute_capability, int64_t* out) {
  // sizes: residual, skip, hidden, outputs, layers, kernel_size, batch.
  const gmk::wavenet_generate::CudaPlan plan =
      gmk::wavenet_generate::plan_cuda(sizes[0], sizes[1], sizes[2], sizes[3], sizes[4], sizes[5], sizes[6],
                                       element_size, mixture != 0, device_shared_bytes, multiprocessors,
                                       compute_capability);
  out[0] = plan.cluster_size;
  out[1] = plan.batch_per_block;
  out[2] = plan.shared_bytes;
  out[3] = plan.weights_in_shared;
  return plan.error.empty() ? 0 : -1;
}

// max_active_clusters_cuda for the cluster kernel of plan (cluster_size, shared_bytes) in dtype; -1 on error.
int gmk_emu_wavenet_max_active_clusters(int64_t cluster_size, int64_t shared_bytes, int dtype) {
  gmk::wavenet_generate::Args a;
  a.batch = 1;
  a.cluster_size = cluster_size;
  a.shared_bytes = shared_bytes;
  a.dtype = static_cast<gmk::DType>(dtype);
  int clusters = 0;
  return gmk::wavenet_generate::max_active_clusters_cuda(a, &clusters) == cudaSuccess ? clusters : -1;
}

// sizes: batch, steps, layers, residual, skip, hidden, outputs, classes, kernel_size, cond_steps, uniforms,
// cache_per_batch, start_class; plan: cluster_size, batch_per_block, shared_bytes, weights_in_shared;
// floats: residual_scale, temperature, log_scale_min; tensors: embedding, conv_weight, conv_bias, res_weight,
// res_bias, skip_weight, skip_bias, head_weight1, head_bias1, head_weight2, head_bias2, cond, uniform,
// layer_info, cache, samples (as wavenet_generate_ops.cpp packs them).
int gmk_emu_wavenet_generate(const int64_t* sizes, const int64_t* plan, const double* floats, int mixture, int dtype,
                             void* const* tensors) {
  gmk::wavenet_generate::Args a;
  a.batch = sizes[0];
  a.steps = sizes[1];
  a.layers = sizes[2];
  a.residual = sizes[3];
  a.skip = sizes[4];
  a.hidden = sizes[5];
  a.outputs = sizes[6];
  a.classes = sizes[7];
  a.kernel_size = sizes[8];
  a.cond_steps = sizes[9];
  a.uniforms = sizes[10];
  a.cache_per_batch = sizes[11];
  a.start_class = sizes[12];
  a.cluster_size = plan[0];
  a.batch_per_block = plan[1];
  a.shared_bytes = plan[2];
  a.weights_in_shared = plan[3] != 0;
  a.residual_scale = static_cast<float>(floats[0]);
  a.temperature = static_cast<float>(floats[1]);
  a.log_scale_min = static_cast<float>(floats[2]);
  a.mixture = mixture != 0;
  a.dtype = static_cast<gmk::DType>(dtype);
  a.embedding = tensors[0];
  a.conv_weight = tensors[1];
  a.conv_bias = tensors[2];
  a.res_weight = tensors[3];
  a.res_bias = tensors[4];
  a.skip_weight = tensors[5];
  a.skip_bias = tensors[6];
  a.head_weight1 = tensors[7];
  a.head_bias1 = tensors[8];
  a.head_weight2 = tensors[9];
  a.head_bias2 = tensors[10];
  a.cond = tensors[11];
  a.uniform = tensors[12];
  a.layer_info = static_cast<const int64_t*>(tensors[13]);
  a.cache = tensors[14];
  a.samples = static_cast<int64_t*>(tensors[15]);
  return gmk::wavenet_generate::generate_cuda(a, nullptr);
}

}  // extern "C"

// --- bias_act and upfirdn2d (issue 13) -------------------------------------------------------------
#include "gmk/bias_act.h"
#include "gmk/upfirdn2d.h"

extern "C" {

// mode: 0 forward, 1 backward, 2 backward2; act: gmk::bias_act::Act; sizes: outer, channels, inner;
// params: alpha, gain, clamp (has_clamp: whether it applies). Tensors: null where not read.
int gmk_emu_bias_act(int mode, int act, const int64_t* sizes, const double* params, int has_clamp, int dtype,
                     const void* x, const void* b, const void* y, const void* grad, const void* grad2, void* out) {
  gmk::bias_act::Args args;
  args.mode = static_cast<gmk::bias_act::Mode>(mode);
  args.act = static_cast<gmk::bias_act::Act>(act);
  args.outer = sizes[0];
  args.channels = sizes[1];
  args.inner = sizes[2];
  args.alpha = params[0];
  args.gain = params[1];
  args.clamp = params[2];
  args.has_clamp = has_clamp != 0;
  args.dtype = static_cast<gmk::DType>(dtype);
  args.x = x;
  args.b = b;
  args.y = y;
  args.grad = grad;
  args.grad2 = grad2;
  args.out = out;
  return gmk::bias_act::run_cuda(args, nullptr);
}

// sizes: batch, channels, in_h, in_w, out_h, out_w, fh, fw, upx, upy, downx, downy, padx0, pady0.
int gmk_emu_upfirdn2d(const int64_t* sizes, const int64_t* x_strides, int flip_filter, double gain, int channels_last,
                      int dtype, const void* x, const void* f, void* out) {
  gmk::upfirdn2d::Args a;
  a.batch = sizes[0];
  a.channels = sizes[1];
  a.in_h = sizes[2];
  a.in_w = sizes[3];
  a.out_h = sizes[4];
  a.out_w = sizes[5];
  a.fh = sizes[6];
  a.fw = sizes[7];
  a.upx = sizes[8];
  a.upy = sizes[9];
  a.downx = sizes[10];
  a.downy = sizes[11];
  a.padx0 = sizes[12];
  a.pady0 = sizes[13];
  for (int d = 0; d < 4; ++d) a.x_strides[d] = x_strides[d];
  a.flip_filter = flip_filter != 0;
  a.gain = gain;
  a.out_channels_last = channels_last != 0;
  a.dtype = static_cast<gmk::DType>(dtype);
  a.x = x;
  a.f = f;
  a.out = out;
  return gmk::upfirdn2d::run_cuda(a, nullptr);
}

}  // extern "C"

// --- vector_quantize (issue 14) ---------------------------------------------------------------------
#include "gmk/vector_quantize.h"

extern "C" {

// sizes: outer, dim, inner, codes. x (outer, dim, inner) and codebook (codes, dim) contiguous, of dtype;
// code_norms (codes) and distance (outer, inner) float32; quantized as x; indices (outer, inner) int64.
int gmk_emu_vector_quantize(const int64_t* sizes, int dtype, const void* x, const void* codebook, void* code_norms,
                            void* quantized, int64_t* indices, void* distance) {
  gmk::vector_quantize::SearchArgs a;
  a.outer = sizes[0];
  a.dim = sizes[1];
  a.inner = sizes[2];
  a.codes = sizes[3];
  a.dtype = static_cast<gmk::DType>(dtype);
  a.x = x;
  a.codebook = codebook;
  a.code_norms = code_norms;
  a.quantized = quantized;
  a.indices = indices;
  a.distance = distance;
  return gmk::vector_quantize::search_cuda(a, nullptr);
}

// sizes: outer, dim, inner, codes; counts (codes) and sums (codes, dim) float32 (the float64 accumulators are
// allocated here, as the op does).
int gmk_emu_vector_quantize_statistics(const int64_t* sizes, int dtype, const void* x, const int64_t* indices,
                                       void* counts, void* sums) {
  std::vector<double> accumulators(static_cast<size_t>(sizes[3] * (sizes[1] + 1)), std::nan(""));
  gmk::vector_quantize::StatisticsArgs a;
  a.accumulators = accumulators.data();
  a.outer = sizes[0];
  a.dim = sizes[1];
  a.inner = sizes[2];
  a.codes = sizes[3];
  a.dtype = static_cast<gmk::DType>(dtype);
  a.x = x;
  a.indices = indices;
  a.counts = counts;
  a.sums = sums;
  return gmk::vector_quantize::statistics_cuda(a, nullptr);
}

}  // extern "C"

// --- cached_conv2d ---------------------------------------------------------------------------------------
#include "gmk/cached_conv.h"

extern "C" {

// sizes: batch, in_channels, out_channels, kh, kw, count, stride; rows_strides: batch, channel, row, column
// (elements; rows points at the window's first element, as cached_conv_ops.cpp passes it).
int gmk_emu_cached_conv(const int64_t* sizes, const int64_t* rows_strides, int dtype, const void* rows,
                        const void* weight, const void* bias, void* out) {
  gmk::cached_conv::Args a;
  a.batch = sizes[0];
  a.in_channels = sizes[1];
  a.out_channels = sizes[2];
  a.kh = sizes[3];
  a.kw = sizes[4];
  a.count = sizes[5];
  a.stride = sizes[6];
  a.s_batch = rows_strides[0];
  a.s_channel = rows_strides[1];
  a.s_row = rows_strides[2];
  a.s_column = rows_strides[3];
  a.dtype = static_cast<gmk::DType>(dtype);
  a.rows = rows;
  a.weight = weight;
  a.bias = bias;
  a.out = out;
  return gmk::cached_conv::run_cuda(a, nullptr);
}

}  // extern "C"
