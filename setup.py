"""Builds gmkernels._C with CMake.

Environment:
  GMK_BUILD_CUDA   auto (default): CUDA kernels when torch has CUDA and nvcc is found; 1: require; 0: skip.
  GMK_CUDA_ARCHS   e.g. "8.0;9.0" or "9.0a": SASS for each, PTX for the last; default: the local GPU,
                   else DEFAULT_CUDA_ARCHS.
  GMK_BUILD_JOBS   parallel compile jobs (default: CPU count).

Beside _C it writes _C_build.json (the torch and CUDA it was built against), which gmkernels/_extension.py
checks before loading _C; a wheel's metadata requires the torch minor version it was built against.
"""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent
# With no GPU visible: native code for every GPU from Turing (what CUDA 13 still compiles for) through Blackwell,
# one arch per major version (SASS runs on its major version's newer minors: 8.0's on 8.6, 8.7 and 8.9, 10.0's
# on 10.3); the last also embeds PTX, which the driver compiles for newer GPUs.
DEFAULT_CUDA_ARCHS = "7.5;8.0;9.0;10.0;12.0"


def find_nvcc():
    cuda_home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH") or "/usr/local/cuda"
    candidate = Path(cuda_home) / "bin" / "nvcc"
    return str(candidate) if candidate.exists() else shutil.which("nvcc")


def want_cuda(torch):
    mode = os.environ.get("GMK_BUILD_CUDA", "auto").lower()
    if mode not in ("auto", "0", "1"):
        raise RuntimeError(f"GMK_BUILD_CUDA must be auto, 0 or 1, got {mode!r}")
    if mode == "0":
        return None
    nvcc = find_nvcc()
    if torch.version.cuda and nvcc:
        return nvcc
    if mode == "1":
        raise RuntimeError(f"GMK_BUILD_CUDA=1 but torch.version.cuda={torch.version.cuda!r}, nvcc={nvcc!r}")
    return None


def cuda_archs(torch):
    """The archs to build for, and why those."""
    archs = os.environ.get("GMK_CUDA_ARCHS", "").strip()
    if archs:
        return archs, "from GMK_CUDA_ARCHS"
    if torch.cuda.is_available():
        major, minor = torch.cuda.get_device_capability()
        return f"{major}.{minor}", f"the local GPU ({torch.cuda.get_device_name()}); GMK_CUDA_ARCHS overrides"
    return DEFAULT_CUDA_ARCHS, ("no GPU is visible and GMK_CUDA_ARCHS is unset, so the default list; "
                                "set GMK_CUDA_ARCHS (e.g. \"9.0\") to build for your GPUs only")


def torch_requirement():
    """_C links against torch's C++ API, whose ABI changes between minor versions: require the built-against minor."""
    try:
        import torch
    except ImportError:  # metadata asked for without torch (an isolated sdist build): any supported torch
        return "torch>=2.4"
    major, minor = (int(part) for part in torch.__version__.split("+")[0].split(".")[:2])
    return f"torch>={major}.{minor},<{major}.{minor + 1}"


def cuda_cmake_args(torch):
    """CMake's CUDA arguments, CMake's arch list (None: no CUDA kernels) and what the build says about them."""
    nvcc = want_cuda(torch)
    if not nvcc:  # said explicitly: a build tree configured with CUDA before keeps the cached ON otherwise
        return ["-DGMK_WITH_CUDA=OFF"], None, "gmkernels: building CPU kernels only"
    archs, why = cuda_archs(torch)
    cmake_archs = cmake_arch_list(archs)
    args = ["-DGMK_WITH_CUDA=ON", f"-DCMAKE_CUDA_COMPILER={nvcc}", f"-DCMAKE_CUDA_ARCHITECTURES={cmake_archs}"]
    return args, cmake_archs, (f"gmkernels: building CUDA kernels for {archs} (SASS for each, PTX for the last) "
                               f"with {nvcc}: {why}")


BUILD_RECORD = "_C_build.json"


def write_build_record(out_dir, torch, cmake_archs):
    record = {"torch_version": torch.__version__, "torch_cuda": torch.version.cuda,
              "with_cuda": cmake_archs is not None, "cuda_archs": cmake_archs}
    (out_dir / BUILD_RECORD).write_text(json.dumps(record, indent=1) + "\n")


def cmake_arch_list(archs):
    """'8.0;9.0a' -> '80-real;90a': real machine code for each, PTX for the last."""
    names = [a.strip().replace(".", "") for a in archs.replace(",", ";").split(";") if a.strip()]
    return ";".join([f"{n}-real" for n in names[:-1]] + names[-1:])


class CMakeBuild(build_ext):
    def copy_extensions_to_source(self):
        """--inplace and editable installs: setuptools copies _C from build_lib into the source tree; its record too."""
        super().copy_extensions_to_source()
        package_dir = self.get_finalized_command("build_py").get_package_dir("gmkernels")
        self.copy_file(os.path.join(self.build_lib, "gmkernels", BUILD_RECORD), os.path.join(package_dir, BUILD_RECORD))

    def build_extension(self, ext):
        import pybind11
        import torch
        from torch.utils import cpp_extension

        out_dir = Path(self.get_ext_fullpath(ext.name)).resolve().parent
        build_dir = Path(self.build_temp).resolve() / "cmake"
        build_dir.mkdir(parents=True, exist_ok=True)
        args = [
            f"-DCMAKE_BUILD_TYPE={os.environ.get('GMK_BUILD_TYPE', 'Release')}",
            f"-DPython3_EXECUTABLE={sys.executable}",
            f"-Dpybind11_DIR={pybind11.get_cmake_dir()}",
            f"-DGMK_TORCH_INCLUDE_DIRS={';'.join(cpp_extension.include_paths())}",
            f"-DGMK_TORCH_LIBRARY_DIR={cpp_extension.library_paths()[0]}",
            f"-DGMK_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}",
            f"-DGMK_OUTPUT_DIR={out_dir}",
            f"-DGMK_TORCH_VERSION={torch.__version__}",
        ]
        if shutil.which("ninja"):
            args.append("-GNinja")
        cuda_args, cmake_archs, message = cuda_cmake_args(torch)
        args += cuda_args
        print(message, flush=True)
        jobs = os.environ.get("GMK_BUILD_JOBS", str(os.cpu_count() or 1))
        subprocess.check_call(["cmake", str(ROOT), *args], cwd=build_dir)
        subprocess.check_call(["cmake", "--build", ".", "--parallel", jobs], cwd=build_dir)
        write_build_record(out_dir, torch, cmake_archs)


if __name__ == "__main__":  # pip, build and `python setup.py` run it as __main__; tests import its helpers
    setup(
        install_requires=[torch_requirement(), "numpy"],
        ext_modules=[Extension("gmkernels._C", sources=[])],
        cmdclass={"build_ext": CMakeBuild},
        packages=["gmkernels", "gmkernels.ops", "gmkernels.reference", "gmkernels.triton", "gmkernels.nn",
                  "gmkernels.models", "gmkernels.training", "gmkernels.benchmarks", "gmkernels.benchmarks.ops",
                  "gmkernels.benchmarks.models"],
        package_dir={"gmkernels": "gmkernels", "gmkernels.benchmarks": "benchmarks"},
    )
