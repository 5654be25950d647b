"""Loads the compiled extension gmkernels._C, which registers the C++ ops under torch.ops.gmkernels."""
import torch  # noqa: F401  (the extension links against torch's libraries: load them first)

try:
    from . import _C
except ImportError as error:  # built without the extension, or for another torch
    _C = None
    LOAD_ERROR = f"{type(error).__name__}: {error}"
else:
    LOAD_ERROR = None


def has_extension() -> bool:
    return _C is not None


def _read_build_info() -> dict:
    if _C is None:
        return {"built": False, "error": LOAD_ERROR, "with_cuda": False, "cuda_version": None, "cuda_archs": [],
                "openmp": False}
    info = _C.build_info()
    info["cuda_archs"] = [_arch_name(arch) for arch in info["cuda_archs"]]
    return {"built": True, **info}


def _arch_name(cmake_arch: str) -> str:
    """CMake's '90a-real' -> '9.0a' (sm code only); '90' -> '9.0+PTX'."""
    digits = cmake_arch.removesuffix("-real")
    name = f"{digits[:-1]}.{digits[-1]}" if digits[-1].isdigit() else f"{digits[:-2]}.{digits[-2:]}"
    return name if cmake_arch.endswith("-real") else f"{name}+PTX"


BUILD_INFO = _read_build_info()  # read once: torch.compile traces plain dict reads, not pybind calls


def build_info() -> dict:
    """How gmkernels._C was built: built, with_cuda, cuda_version, cuda_archs, openmp, torch_version, compiler."""
    return dict(BUILD_INFO)
