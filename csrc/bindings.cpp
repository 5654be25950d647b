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
  info["torch_version"] = GMK_TORCH_VERSION;
  info["compiler"] = __VERSION__;
  return info;
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "gmkernels compiled ops (registered under torch.ops.gmkernels) and build information";
  m.def("build_info", &build_info, "How this extension was built: CUDA or not, CUDA version and archs, torch version.");
}
