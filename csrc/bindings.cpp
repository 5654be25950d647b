// The one list of gmkernels' C++ op schemas, and build information for Python.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>
#include <torch/library.h>

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
  // transform "glow" | "realnvp" | "additive"; layout "halves" | "interleaved". Returns y (x's shape,
  // contiguous, x_a passed through) and logdet (outer) = ±Σ log s, float32 (float64 for float64 x).
  m.def("coupling(Tensor x, Tensor h, str transform, str layout, bool reverse) -> (Tensor, Tensor)");
  // Gradients with respect to x and h (contiguous), recomputing the forward from x and h.
  m.def("coupling_backward(Tensor grad_y, Tensor grad_logdet, Tensor x, Tensor h, str transform, str layout, "
        "bool reverse) -> (Tensor, Tensor)");
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
}
