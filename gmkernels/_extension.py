"""Loads the compiled extension gmkernels._C, which registers the C++ ops under torch.ops.gmkernels.

setup.py writes a record beside ``_C`` (``_C_build.json``: the torch and CUDA it was built against). It is read
before ``_C`` is loaded: torch's C++ ABI changes between minor versions, so a ``_C`` built against another torch
minor (or another CUDA major, or with CUDA kernels under a CPU-only torch) is refused with an ImportError that
says what to do, instead of an undefined-symbol error or a load that half works.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch  # the extension links against torch's libraries: load them first

BUILD_RECORD = Path(__file__).with_name("_C_build.json")
REBUILD = ("or rebuild gmkernels against the torch installed: python -m pip install --no-build-isolation "
           "--no-deps --force-reinstall <the gmkernels source folder or sdist> (README: Building)")


def _minor_version(version: str) -> tuple[int, int]:
    major, minor = version.split("+")[0].split(".")[:2]
    return int(major), int(minor)


def torch_mismatch(record: dict, torch_version: str, torch_cuda: str | None) -> str | None:
    """Why a ``_C`` built as ``record`` says cannot load under this torch, or None if it can."""
    built = record["torch_version"]
    if _minor_version(built) != _minor_version(torch_version):
        major, minor = _minor_version(built)
        return (f"gmkernels._C was built against torch {built} but torch {torch_version} is installed; torch's "
                f"C++ ABI changes between minor versions, so _C cannot be loaded. Install the torch it was built "
                f"for (python -m pip install \"torch=={major}.{minor}.*\"), {REBUILD}")
    if not record["with_cuda"]:
        return None
    built_cuda = record["torch_cuda"]
    if torch_cuda is None:
        return (f"gmkernels._C holds CUDA {built_cuda} kernels (built against torch {built}) but torch "
                f"{torch_version} is a CPU-only build; install torch's CUDA {built_cuda} build, {REBUILD} "
                f"(with GMK_BUILD_CUDA=0 for a CPU-only _C)")
    if built_cuda.split(".")[0] != torch_cuda.split(".")[0]:
        return (f"gmkernels._C was built with CUDA {built_cuda} (torch {built}) but torch {torch_version} uses "
                f"CUDA {torch_cuda}; the CUDA runtime's major versions differ. Install torch's CUDA {built_cuda} "
                f"build, {REBUILD}")
    return None


def _check_build_record() -> None:
    if not BUILD_RECORD.exists():  # built before records were written, or not built: loading decides
        return
    problem = torch_mismatch(json.loads(BUILD_RECORD.read_text()), torch.__version__, torch.version.cuda)
    if problem is not None:
        raise ImportError(problem)


_check_build_record()

try:
    from . import _C
except ImportError as error:  # not built, or cannot load here: the other backends still run
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
