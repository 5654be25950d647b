// The one list of gmkernels' C++ op schemas, and build information for Python.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>
#include <torch/library.h>

#include "gmk/wavenet_generate.h"

#include <string>
#include <vector>

#if defined(GMK_WITH_CUDA)
#include <cuda_runtime_api.h>
#endif

TORCH_LIBRARY(gmkernels, m) {
  // gated: x (outer, 2C, inner), cond None or the same shape (any strides, broadcast ok);
  // activation "tanh" | "identity". Returns y (outer, C, inner).
  m.def("gated(Tensor x, Tensor? cond, str activation) -> Tensor");
  // Gradient with respect to x + cond: (outer, 2C, inner).
  m.def("gated_backward(Tensor grad_y, Tensor x, Tensor? cond, str activation) -> Tensor");
  // logistic_mixture (PixelCNN++ discretized logistic mixture): params (N, P, S), P = 10K for C = 3,
  // 3K for C = 1, any strides; x (N, C, S) float32 (float64 iff params is). Returns nll (N, S) in nats.
  m.def("logistic_mixture_nll(Tensor params, Tensor x, int num_bins, float log_scale_min) -> Tensor");
  // grad_nll (N, S) -> gradient with respect to params (N, P, S), params' dtype; recomputes the forward.
  m.def("logistic_mixture_nll_backward(Tensor grad_nll, Tensor params, Tensor x, int num_bins, "
        "float log_scale_min) -> Tensor");
  // Uniform noise gumbel_u (N, K, S), logistic_u (N, C, S) -> samples (N, C, S) on the bin grid.
  m.def("logistic_mixture_sample(Tensor params, Tensor gumbel_u, Tensor logistic_u, int num_bins, "
        "float log_scale_min) -> Tensor");
  // masked_conv (PixelCNN masked and PixelCNN++ shifted convolutions, stride 1, output H x W, the zero
  // padding implied): x (N, Cin, H, W) any strides, weight (Cout, Cin, kh, kw), bias None or (Cout).
  // y and grad_x are channels_last when x is (dense channels_last and not NCHW), else contiguous.
  // masked_conv2d: kh = kw = k odd; mask_type "A" | "B"; color_groups divides Cin and Cout (3: RGB).
  // Masked weights are never read.
  m.def("masked_conv2d(Tensor x, Tensor weight, Tensor? bias, str mask_type, int color_groups) -> Tensor");
  // output_mask: which of (grad_x, grad_weight, grad_bias) to compute, the others are undefined;
  // grad_weight is exactly zero at masked weights.
  m.def("masked_conv2d_backward(Tensor grad_out, Tensor x, Tensor weight, str mask_type, int color_groups, "
        "bool[3] output_mask) -> (Tensor, Tensor, Tensor)");
  // shifted_conv2d: shift "down" (kw odd; output (i, j) sees rows i-kh+1..i, columns j-(kw-1)/2..j+(kw-1)/2)
  // or "down_right" (rows i-kh+1..i, columns j-kw+1..j).
  m.def("shifted_conv2d(Tensor x, Tensor weight, Tensor? bias, str shift) -> Tensor");
  m.def("shifted_conv2d_backward(Tensor grad_out, Tensor x, Tensor weight, str shift, bool[3] output_mask) "
        "-> (Tensor, Tensor, Tensor)");
  // actnorm (Glow): x (N, C, positions) any strides; bias, log_scale (C) float (float64 for float64 x).
  // Returns (x + bias)·exp(log_scale), or x·exp(-log_scale) - bias when reverse, contiguous.
  m.def("actnorm(Tensor x, Tensor bias, Tensor log_scale, bool reverse) -> Tensor");
  // Gradients with respect to x (contiguous), bias and log_scale (the log-determinant's are not included).
  m.def("actnorm_backward(Tensor grad_out, Tensor x, Tensor bias, Tensor log_scale, bool reverse) "
        "-> (Tensor, Tensor, Tensor)");
  // conv1x1 (the invertible 1x1 convolution, and actnorm folded into it): x (N, C, positions) any strides;
  // weight (Cout, C), bias None or (Cout), float (float64 for float64 x). Returns weight·x + bias at every
  // position, (N, Cout, positions) contiguous.
  m.def("conv1x1(Tensor x, Tensor weight, Tensor? bias) -> Tensor");
  // (grad_x, grad_weight, grad_bias), each undefined where output_mask is False.
  m.def("conv1x1_backward(Tensor grad_y, Tensor x, Tensor weight, bool[3] output_mask) "
        "-> (Tensor, Tensor, Tensor)");
  // coupling (NICE / RealNVP / Glow affine and additive coupling): x (outer, C, inner), C even, any
  // strides; h (outer, C, inner) holding r and t ((outer, C/2, inner), t only, for "additive");
  // transform "glow" | "realnvp" | "additive"; layout "halves" | "interleaved", or "checkerboard" |
  // "checkerboard_odd" with x (outer, C, H, W), any C, and h (outer, 2C or C, H, W) (x_a at (i + j) even
  // or odd; docs/conventions.md). Returns y (x's shape, contiguous, x_a passed through) and logdet
  // (outer) = ±Σ log s, float32 (float64 for float64 x).
  m.def("coupling(Tensor x, Tensor h, str transform, str layout, bool reverse) -> (Tensor, Tensor)");
  // Gradients with respect to x and h (contiguous), recomputing the forward from x and h.
  m.def("coupling_backward(Tensor grad_y, Tensor grad_logdet, Tensor x, Tensor h, str transform, str layout, "
        "bool reverse) -> (Tensor, Tensor)");
  // causal_conv (WaveNet): x (N, Cin, T) any strides, weight (Cout, Cin, k), bias None or (Cout);
  // y[n, o, t] = bias[o] + sum_j sum_i weight[o, i, j] x[n, i, t - (k-1-j) dilation], zero before the start.
  m.def("causal_conv1d(Tensor x, Tensor weight, Tensor? bias, int dilation) -> Tensor");
  m.def("causal_conv1d_backward(Tensor grad_out, Tensor x, Tensor weight, int dilation, bool[3] output_mask) "
        "-> (Tensor, Tensor, Tensor)");
  // The WaveNet residual layer: x (N, R, T), conv_weight (2R, R, k), res_weight (R, R), skip_weight (S, R),
  // biases None or 1-D, cond None or (N, 2R, T) (any strides, stride 0 for global conditioning).
  // Returns x_next (N, R, T) = (x + res_weight z + res_bias) residual_scale and skip (N, S, T).
  m.def("wavenet_layer(Tensor x, Tensor conv_weight, Tensor? conv_bias, Tensor res_weight, Tensor? res_bias, "
        "Tensor skip_weight, Tensor? skip_bias, Tensor? cond, int dilation, float residual_scale) -> (Tensor, Tensor)");
  // Gradients of (x, conv_weight, conv_bias, res_weight, res_bias, skip_weight, skip_bias, cond) where
  // output_mask asks (undefined otherwise); recomputes h and z (the forward stores neither).
  m.def("wavenet_layer_backward(Tensor grad_x_next, Tensor grad_skip, Tensor x, Tensor conv_weight, "
        "Tensor? conv_bias, Tensor res_weight, Tensor skip_weight, Tensor? cond, int dilation, float residual_scale, "
        "bool[8] output_mask) -> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
  // WaveNet generation, the whole autoregressive loop: embedding (A, R); conv_weight (L, 2R, R, k); conv_bias
  // (L, 2R); res_weight (L, R, R); res_bias (L, R); skip_weight (L, S, R); skip_bias (L, S); head_weight1 (H, S);
  // head_bias1 (H); head_weight2 (P, H); head_bias2 (P); cond None or (L, N, 2R, 1 or T); uniform (N, T, U)
  // float32 (float64 for float64 weights), U = 1 ("softmax", P = A) or 2 ("logistic_mixture", P = 3K).
  // Returns the sampled classes (N, T) int64 (rule: gmkernels/reference/wavenet_generate.py).
  m.def("wavenet_generate(Tensor embedding, Tensor conv_weight, Tensor conv_bias, Tensor res_weight, "
        "Tensor res_bias, Tensor skip_weight, Tensor skip_bias, Tensor head_weight1, Tensor head_bias1, "
        "Tensor head_weight2, Tensor head_bias2, Tensor? cond, Tensor uniform, int[] dilations, int start_class, "
        "float residual_scale, float temperature, str head, float log_scale_min) -> Tensor");
}

namespace {

std::vector<std::string> split_archs(const std::string& archs) {
  std::vector<std::string> out;
  size_t start = 0;
  while (start <= archs.size()) {
    const size_t end = std::min(archs.find(',', start), archs.size());
    if (end > start) out.push_back(archs.substr(start, end - start));
    start = end + 1;
  }
  return out;
}

pybind11::dict build_info() {
  pybind11::dict info;
#if defined(GMK_WITH_CUDA)
  info["with_cuda"] = true;
  info["cuda_version"] = std::to_string(CUDART_VERSION / 1000) + "." + std::to_string(CUDART_VERSION % 1000 / 10);
  info["cuda_archs"] = split_archs(GMK_CUDA_ARCHS);
#else
  info["with_cuda"] = false;
  info["cuda_version"] = pybind11::none();
  info["cuda_archs"] = std::vector<std::string>{};
#endif
#if defined(_OPENMP)
  info["openmp"] = true;  // at::parallel_for runs the CPU kernels on torch's threads
#else
  info["openmp"] = false;
#endif
  info["torch_version"] = GMK_TORCH_VERSION;
  info["compiler"] = __VERSION__;
  return info;
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "gmkernels compiled ops (registered under torch.ops.gmkernels) and build information";
  m.def("build_info", &build_info, "How this extension was built: CUDA or not, CUDA version and archs, torch version.");
  m.def(
      "wavenet_generate_cuda_plan",
      [](int64_t r, int64_t s, int64_t h, int64_t p, int64_t layers, int64_t k, int64_t batch, int64_t element_size,
         bool mixture, int64_t max_shared_bytes, int64_t multiprocessors, int64_t compute_capability) {
        const auto plan = gmk::wavenet_generate::plan_cuda(r, s, h, p, layers, k, batch, element_size, mixture,
                                                           max_shared_bytes, multiprocessors, compute_capability);
        pybind11::dict out;
        out["cluster_size"] = plan.cluster_size;
        out["batch_per_block"] = plan.batch_per_block;
        out["shared_bytes"] = plan.shared_bytes;
        out["weight_bytes"] = plan.weight_bytes;
        out["weights_in_shared"] = plan.weights_in_shared;
        out["error"] = plan.error;
        return out;
      },
      "The persistent WaveNet generation kernel's plan for a configuration and device limits (host code).");
}
