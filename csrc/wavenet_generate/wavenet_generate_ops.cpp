// gmkernels::wavenet_generate: one body (argument checks, the weights repacked input-major, the ring
// buffers allocated) shared by the CPU implementation (weights in the compute type, the CPU loop) and
// the CUDA one (weights in their dtype, the persistent kernel after its shared-memory plan). Fake
// tensors are registered in gmkernels/ops/wavenet_generate.py.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <vector>

#include "gmk/aten.h"
#include "gmk/wavenet_generate.h"

namespace gmk::wavenet_generate {
namespace {

constexpr const char* kOp = "gmkernels::wavenet_generate";

void check_weight(const at::Tensor& t, const char* name, at::IntArrayRef sizes, const at::Tensor& embedding) {
  TORCH_CHECK_VALUE(t.sizes() == sizes, kOp, ": ", name, " must have shape ", sizes, ", got ", t.sizes());
  TORCH_CHECK_TYPE(t.scalar_type() == embedding.scalar_type(), kOp, ": ", name, " must have embedding's dtype ",
                   embedding.scalar_type(), ", got ", t.scalar_type());
  TORCH_CHECK_VALUE(t.device() == embedding.device(), kOp, ": ", name, " must be on embedding's device ",
                    embedding.device(), ", got ", t.device());
}

// t in the layout the kernels read (dims permuted, contiguous) and type (CPU: the compute type).
const void* repack(const at::Tensor& t, at::IntArrayRef dims, at::ScalarType type, std::vector<at::Tensor>& keep) {
  keep.push_back(t.permute(dims).to(type).contiguous());
  return keep.back().data_ptr();
}

// The weights are stored in the compute type when weights_in_compute_type, else in their dtype;
// launch(a, layer_info) runs the kernel.
template <typename Launch>
at::Tensor wavenet_generate(const at::Tensor& embedding, const at::Tensor& conv_weight, const at::Tensor& conv_bias,
                            const at::Tensor& res_weight, const at::Tensor& res_bias, const at::Tensor& skip_weight,
                            const at::Tensor& skip_bias, const at::Tensor& head_weight1,
                            const at::Tensor& head_bias1, const at::Tensor& head_weight2,
                            const at::Tensor& head_bias2, const std::optional<at::Tensor>& cond,
                            const at::Tensor& uniform, at::IntArrayRef dilations, int64_t start_class,
                            double residual_scale, double temperature, c10::string_view head,
                            double log_scale_min, bool weights_in_compute_type, Launch launch) {
  Args a;
  a.dtype = to_dtype(kOp, "embedding", embedding);
  TORCH_CHECK_VALUE(embedding.dim() == 2 && embedding.size(0) >= 2 && embedding.size(1) >= 1, kOp,
                    ": embedding must be (A >= 2, R >= 1), got shape ", embedding.sizes());
  a.classes = embedding.size(0);
  a.residual = embedding.size(1);
  const int64_t r = a.residual;
  TORCH_CHECK_VALUE(conv_weight.dim() == 4 && conv_weight.size(0) >= 1, kOp,
                    ": conv_weight must be (L, 2R, R, k), got shape ", conv_weight.sizes());
  a.layers = conv_weight.size(0);
  a.kernel_size = conv_weight.size(3);
  TORCH_CHECK_VALUE(a.kernel_size >= 1, kOp, ": conv_weight's kernel size (dim 3) must be >= 1, got 0");
  TORCH_CHECK_VALUE(skip_weight.dim() == 3 && skip_weight.size(1) >= 1, kOp,
                    ": skip_weight must be (L, S, R), got shape ", skip_weight.sizes());
  a.skip = skip_weight.size(1);
  TORCH_CHECK_VALUE(head_weight1.dim() == 2 && head_weight1.size(0) >= 1, kOp,
                    ": head_weight1 must be (H, S), got shape ", head_weight1.sizes());
  a.hidden = head_weight1.size(0);
  TORCH_CHECK_VALUE(head_weight2.dim() == 2 && head_weight2.size(0) >= 1, kOp,
                    ": head_weight2 must be (P, H), got shape ", head_weight2.sizes());
  a.outputs = head_weight2.size(0);
  const int64_t n_layers = a.layers, k = a.kernel_size, s = a.skip, h = a.hidden, p = a.outputs;
  check_weight(conv_weight, "conv_weight", {n_layers, 2 * r, r, k}, embedding);
  check_weight(conv_bias, "conv_bias", {n_layers, 2 * r}, embedding);
  check_weight(res_weight, "res_weight", {n_layers, r, r}, embedding);
  check_weight(res_bias, "res_bias", {n_layers, r}, embedding);
  check_weight(skip_weight, "skip_weight", {n_layers, s, r}, embedding);
  check_weight(skip_bias, "skip_bias", {n_layers, s}, embedding);
  check_weight(head_weight1, "head_weight1", {h, s}, embedding);
  check_weight(head_bias1, "head_bias1", {h}, embedding);
  check_weight(head_weight2, "head_weight2", {p, h}, embedding);
  check_weight(head_bias2, "head_bias2", {p}, embedding);

  TORCH_CHECK_VALUE(head == "softmax" || head == "logistic_mixture", kOp,
                    ": head must be 'softmax' or 'logistic_mixture', got '", head, "'");
  a.mixture = head == "logistic_mixture";
  TORCH_CHECK_VALUE(a.mixture ? p % 3 == 0 : p == a.classes, kOp, ": head_weight2 must have ",
                    a.mixture ? "3K rows (K logits, means, log-scales)" : "A rows (one per class)", ", got ", p);
  a.uniforms = a.mixture ? 2 : 1;
  const at::ScalarType noise_type = a.dtype == DType::Float64 ? at::kDouble : at::kFloat;
  TORCH_CHECK_TYPE(uniform.scalar_type() == noise_type, kOp, ": uniform must be ", noise_type,
                   " (float64 iff the weights are), got ", uniform.scalar_type());
  TORCH_CHECK_VALUE(uniform.dim() == 3 && uniform.size(0) >= 1 && uniform.size(2) == a.uniforms, kOp,
                    ": uniform must be (N, T, ", a.uniforms, "), got shape ", uniform.sizes());
  TORCH_CHECK_VALUE(uniform.device() == embedding.device(), kOp, ": uniform must be on embedding's device");
  a.batch = uniform.size(0);
  a.steps = uniform.size(1);
  if (cond.has_value()) {
    const at::Tensor& c = *cond;
    TORCH_CHECK_VALUE(c.dim() == 4 && c.size(0) == n_layers && c.size(1) == a.batch && c.size(2) == 2 * r &&
                          (c.size(3) == 1 || c.size(3) == a.steps),
                      kOp, ": cond must be (L, N, 2R, 1 or T), got shape ", c.sizes());
    check_weight(c, "cond", c.sizes(), embedding);
    a.cond_steps = c.size(3);
  }
  TORCH_CHECK_VALUE(static_cast<int64_t>(dilations.size()) == n_layers, kOp, ": dilations must hold L=", n_layers,
                    " values, got ", dilations.size());
  TORCH_CHECK_VALUE(start_class >= 0 && start_class < a.classes, kOp, ": start_class must be in [0, ", a.classes,
                    "), got ", start_class);
  TORCH_CHECK_VALUE(temperature > 0, kOp, ": temperature must be > 0, got ", temperature);
  a.start_class = start_class;
  a.residual_scale = static_cast<float>(residual_scale);
  a.temperature = static_cast<float>(temperature);
  a.log_scale_min = static_cast<float>(log_scale_min);

  // Ring buffers: layer l holds (k-1)·d_l rows of R at layer_info[l][1] in each element's cache.
  at::Tensor layer_info = at::empty({n_layers, 2}, at::kLong);
  int64_t* info = layer_info.data_ptr<int64_t>();
  int64_t offset = 0;
  for (int64_t l = 0; l < n_layers; ++l) {
    TORCH_CHECK_VALUE(dilations[l] >= 1, kOp, ": dilations must be >= 1, got ", dilations[l], " at layer ", l);
    info[2 * l] = dilations[l];
    info[2 * l + 1] = offset;
    offset += (k - 1) * dilations[l] * r;
  }
  a.cache_per_batch = offset;

  const at::ScalarType compute = a.dtype == DType::Float64 ? at::kDouble : at::kFloat;
  const at::ScalarType stored = weights_in_compute_type ? compute : embedding.scalar_type();
  std::vector<at::Tensor> keep;
  a.embedding = repack(embedding, {0, 1}, stored, keep);
  a.conv_weight = repack(conv_weight, {0, 3, 2, 1}, stored, keep);
  a.conv_bias = repack(conv_bias, {0, 1}, stored, keep);
  a.res_weight = repack(res_weight, {0, 2, 1}, stored, keep);
  a.res_bias = repack(res_bias, {0, 1}, stored, keep);
  a.skip_weight = repack(skip_weight, {0, 2, 1}, stored, keep);
  a.skip_bias = repack(skip_bias, {0, 1}, stored, keep);
  a.head_weight1 = repack(head_weight1, {1, 0}, stored, keep);
  a.head_bias1 = repack(head_bias1, {0}, stored, keep);
  a.head_weight2 = repack(head_weight2, {1, 0}, stored, keep);
  a.head_bias2 = repack(head_bias2, {0}, stored, keep);
  if (cond.has_value()) a.cond = repack(*cond, {0, 1, 3, 2}, stored, keep);
  const at::Tensor uniform_dense = uniform.contiguous();
  a.uniform = uniform_dense.data_ptr();
  const at::Tensor cache = at::zeros({a.batch, std::max<int64_t>(a.cache_per_batch, 1)},
                                     embedding.options().dtype(compute));
  a.cache = cache.data_ptr();
  at::Tensor samples = at::empty({a.batch, a.steps}, uniform.options().dtype(at::kLong));
  a.samples = samples.data_ptr<int64_t>();

  a.layer_info = info;
  launch(a, layer_info);
  return samples;
}

at::Tensor wavenet_generate_on_cpu(const at::Tensor& embedding, const at::Tensor& conv_weight,
                                   const at::Tensor& conv_bias, const at::Tensor& res_weight, const at::Tensor& res_bias,
                                   const at::Tensor& skip_weight, const at::Tensor& skip_bias,
                                   const at::Tensor& head_weight1, const at::Tensor& head_bias1,
                                   const at::Tensor& head_weight2, const at::Tensor& head_bias2,
                                   const std::optional<at::Tensor>& cond, const at::Tensor& uniform,
                                   at::IntArrayRef dilations, int64_t start_class, double residual_scale,
                                   double temperature, c10::string_view head, double log_scale_min) {
  const auto launch = [](const Args& a, const at::Tensor&) { run_cpu(a.batch * a.steps, a, generate_cpu); };
  return wavenet_generate(embedding, conv_weight, conv_bias, res_weight, res_bias, skip_weight, skip_bias, head_weight1,
                          head_bias1, head_weight2, head_bias2, cond, uniform, dilations, start_class,
                          residual_scale, temperature, head, log_scale_min, true, launch);
}

#if defined(GMK_WITH_CUDA)
// The persistent kernel's plan for embedding's device (Args::cluster_size, batch_per_block, shared_bytes,
// weights_in_shared): the cluster kernel where every element's cluster can be resident at once, else
// the block kernel.
void plan_on_device(Args& a, const at::Tensor& embedding) {
  const c10::cuda::CUDAGuard guard(embedding.device());
  int shared_optin = 0, multiprocessors = 0, major = 0, minor = 0;
  const int device = embedding.get_device();
  TORCH_CHECK(cudaDeviceGetAttribute(&shared_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device) == cudaSuccess &&
                  cudaDeviceGetAttribute(&multiprocessors, cudaDevAttrMultiProcessorCount, device) == cudaSuccess &&
                  cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) == cudaSuccess &&
                  cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device) == cudaSuccess,
              kOp, ": cannot query the device's limits");
  const auto plan_for = [&](int64_t compute_capability) {
    const CudaPlan plan = plan_cuda(a.residual, a.skip, a.hidden, a.outputs, a.layers, a.kernel_size, a.batch,
                                    embedding.element_size(), a.mixture, shared_optin, multiprocessors,
                                    compute_capability);
    TORCH_CHECK_VALUE(plan.error.empty(), plan.error);
    a.cluster_size = plan.cluster_size;
    a.batch_per_block = plan.batch_per_block;
    a.shared_bytes = plan.shared_bytes;
    a.weights_in_shared = plan.weights_in_shared;
  };
  plan_for(10 * major + minor);
  if (a.cluster_size > 0) {  // every element's cluster must be resident at once, else the block kernel
    int clusters = 0;
    const cudaError_t err = max_active_clusters_cuda(a, &clusters);
    TORCH_CHECK(err == cudaSuccess, kOp, ": cannot query the cluster occupancy: ", cudaGetErrorString(err));
    if (clusters < a.batch) plan_for(0);
  }
}

at::Tensor wavenet_generate_on_cuda(const at::Tensor& embedding, const at::Tensor& conv_weight,
                                    const at::Tensor& conv_bias, const at::Tensor& res_weight,
                                    const at::Tensor& res_bias,
                                    const at::Tensor& skip_weight, const at::Tensor& skip_bias,
                                    const at::Tensor& head_weight1, const at::Tensor& head_bias1,
                                    const at::Tensor& head_weight2, const at::Tensor& head_bias2,
                                    const std::optional<at::Tensor>& cond, const at::Tensor& uniform,
                                    at::IntArrayRef dilations, int64_t start_class, double residual_scale,
                                    double temperature, c10::string_view head, double log_scale_min) {
  const auto launch = [&](Args& a, const at::Tensor& layer_info) {
    plan_on_device(a, embedding);
    const at::Tensor layer_info_device = layer_info.to(embedding.device());
    a.layer_info = layer_info_device.data_ptr<int64_t>();
    run_cuda(kOp, embedding, a.batch * a.steps, a, generate_cuda);
  };
  return wavenet_generate(embedding, conv_weight, conv_bias, res_weight, res_bias, skip_weight, skip_bias, head_weight1,
                          head_bias1, head_weight2, head_bias2, cond, uniform, dilations, start_class,
                          residual_scale, temperature, head, log_scale_min, false, launch);
}
#endif

}  // namespace

TORCH_LIBRARY_IMPL(gmkernels, CPU, m) { m.impl("wavenet_generate", &wavenet_generate_on_cpu); }

#if defined(GMK_WITH_CUDA)
TORCH_LIBRARY_IMPL(gmkernels, CUDA, m) { m.impl("wavenet_generate", &wavenet_generate_on_cuda); }
#endif

}  // namespace gmk::wavenet_generate
