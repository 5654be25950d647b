// Build information for Python. The op schemas are declared once, in Python (gmkernels/ops/<family>.py, through
// gmkernels/ops/_declare.py); each family's <family>_ops.cpp registers its CPU and CUDA kernels for them.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "gmk/wavenet_generate.h"

#include <string>
#include <vector>

#if defined(GMK_WITH_CUDA)
#include <cuda_runtime_api.h>
#endif

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
