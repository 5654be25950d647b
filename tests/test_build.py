"""How gmkernels._C was built, and the `gmk info` command that reports it."""
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import gmkernels as gmk


def nvcc():
    """The nvcc that setup.py would find: $CUDA_HOME (or $CUDA_PATH, /usr/local/cuda)/bin/nvcc, else PATH."""
    home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH") or "/usr/local/cuda"
    candidate = Path(home) / "bin" / "nvcc"
    return str(candidate) if candidate.exists() else shutil.which("nvcc")


def test_build_info():
    info = gmk.build_info()
    assert {"built", "with_cuda", "cuda_version", "cuda_archs"} <= info.keys()
    assert info["built"] is True and gmk.has_extension(), info.get("error")
    assert info["openmp"] is True, "without OpenMP at::parallel_for runs every CPU kernel on one thread"
    assert info["torch_version"] == torch.__version__
    if info["with_cuda"]:
        assert re.fullmatch(r"\d+\.\d+", info["cuda_version"])
        assert info["cuda_archs"]
        assert all(re.fullmatch(r"\d+\.\d+a?(\+PTX)?", arch) for arch in info["cuda_archs"])
    else:
        assert info["cuda_version"] is None and info["cuda_archs"] == []


def test_build_info_is_a_copy():
    gmk.build_info()["with_cuda"] = "changed"
    assert gmk.build_info()["with_cuda"] in (True, False)


@pytest.mark.skipif(os.environ.get("GMK_BUILD_CUDA") == "0", reason="GMK_BUILD_CUDA=0: built without CUDA")
@pytest.mark.skipif(not (torch.version.cuda and nvcc()), reason="needs torch's CUDA build and nvcc")
def test_cuda_kernels_are_built_where_they_can_be():
    """With torch's CUDA build and nvcc (CI here, no GPU), the CUDA kernels are compiled and linked in."""
    info = gmk.build_info()
    assert info["with_cuda"] is True
    assert info["cuda_version"].split(".")[0] == torch.version.cuda.split(".")[0]


INFO_LABELS = ("gmkernels", "python", "torch", "triton", "CUDA (torch)", "_C", "CUDA archs", "GPU 0",
               "backends cpu", "backends cuda")


def test_gmk_info():
    result = subprocess.run([sys.executable, "-m", "gmkernels", "info"], capture_output=True, text=True,
                            timeout=120, check=True)
    lines = {}
    for line in result.stdout.splitlines():  # "label<spaces>value", labels padded to a column
        label = next(label for label in INFO_LABELS if line.startswith(label + " "))
        lines[label] = line[len(label):].strip()
    info = gmk.build_info()
    try:
        import triton
        triton_version = triton.__version__
    except ImportError:
        triton_version = "not installed"
    assert lines["gmkernels"] == gmk.__version__
    assert lines["torch"] == torch.__version__
    assert lines["triton"] == triton_version
    assert lines["CUDA (torch)"] == (torch.version.cuda or "none (CPU build)")
    assert lines["_C"].startswith("built with CUDA" if info["with_cuda"] else "built without CUDA")
    assert lines["CUDA archs"] == (", ".join(info["cuda_archs"]) or "-")
    assert lines["backends cpu"] == ", ".join(gmk.available_backends("cpu"))
    assert ("backends cuda" in lines) == torch.cuda.is_available()


def test_gmk_without_a_command_fails_with_usage():
    result = subprocess.run([sys.executable, "-m", "gmkernels"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "usage: gmk" in result.stderr


def test_a_failed_check_in_cpp_raises_in_a_fresh_process():
    """A TORCH_CHECK failing inside _C must reach Python as an exception, not kill the process.

    Run in a subprocess so that a crash (seen once on a GPU machine, torch 2.11 + gcc 13) fails this
    test with its output instead of taking the whole test session down.
    """
    script = ("import torch, gmkernels\n"
              "try:\n"
              "    torch.ops.gmkernels.gated(torch.randn(2, 3, 4), None, 'tanh')\n"
              "except ValueError as error:\n"
              "    print('raised:', error)\n")
    result = subprocess.run([sys.executable, "-X", "faulthandler", "-c", script], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, f"exit code {result.returncode}\n{result.stdout}\n{result.stderr}"
    assert "raised:" in result.stdout and "must be even" in result.stdout, result.stdout + result.stderr
