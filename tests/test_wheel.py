"""Wheels for chosen GPU archs (the wheel itself is built and checked by .ci/wheel, not here).

- which GPUs the CUDA kernels of _C can run on, and what the backends do on a GPU the build does not cover
  (faked on the CPU: torch.cuda's device queries are replaced);
- the build record beside _C, which refuses a _C built against another torch minor version;
- setup.py's arch choice, its message and the torch pin of the wheel's metadata.
"""
import importlib.util
import json
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch

import gmkernels as gmk
from gmkernels import _backend, _extension, cli
from gmkernels._cuda_archs import describe_contents, kernel_image_for, parse_arch
from gmkernels.ops.gated import GATED

ROOT = Path(__file__).resolve().parents[1]
TRITON_INSTALLED = importlib.util.find_spec("triton") is not None
WHEEL_ARCHS = ["8.0", "9.0+PTX"]  # what GMK_CUDA_ARCHS="8.0;9.0" builds


def load_setup_py():
    spec = importlib.util.spec_from_file_location("gmk_setup_py", ROOT / "setup.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # setup() itself runs only as __main__
    return module


# --- which GPUs a build runs on ---

@pytest.mark.parametrize("capability, expected", [
    ((8, 0), "SASS 8.0"), ((8, 6), "SASS 8.0"), ((8, 9), "SASS 8.0"),  # SASS: same major, same or newer minor
    ((9, 0), "SASS 9.0"),
    ((10, 0), "PTX 9.0"), ((12, 0), "PTX 9.0"),  # PTX is compiled by the driver for newer GPUs
    ((7, 5), None), ((7, 0), None),  # ... never for older ones
])
def test_kernel_image_for_the_wheels_archs(capability, expected):
    assert kernel_image_for(capability, WHEEL_ARCHS) == expected


def test_ptx_runs_forward_only():
    assert kernel_image_for((8, 6), ["9.0+PTX"]) is None
    assert kernel_image_for((9, 0), ["8.0+PTX"]) == "PTX 8.0"
    assert kernel_image_for((9, 0), ["8.0"]) is None  # SASS without PTX never crosses a major version


def test_arch_specific_code_runs_on_its_arch_only():
    assert kernel_image_for((9, 0), ["9.0a+PTX"]) == "SASS 9.0a"
    assert kernel_image_for((10, 0), ["9.0a+PTX"]) is None
    assert kernel_image_for((10, 3), ["10.0f"]) == "SASS 10.0f"
    assert kernel_image_for((12, 0), ["10.0f+PTX"]) is None


def test_parse_arch():
    assert parse_arch("12.0+PTX") == parse_arch("12.0+PTX")
    arch = parse_arch("9.0a+PTX")
    assert (arch.major, arch.minor, arch.suffix, arch.ptx, arch.name) == (9, 0, "a", True, "9.0a")
    with pytest.raises(ValueError, match="parse_arch.*'sm_90'"):
        parse_arch("sm_90")


def test_describe_contents():
    assert describe_contents(WHEEL_ARCHS) == "SASS for 8.0, 9.0 and PTX for 9.0"
    assert describe_contents(["8.0"]) == "SASS for 8.0 and no PTX"


def test_build_info_archs_parse():
    for name in gmk.build_info()["cuda_archs"]:
        parse_arch(name)


# --- a GPU the build does not cover, faked ---

def fake_cuda(gpu: dict):
    """torch.cuda's device queries for one visible GPU of capability gpu["capability"]."""
    def capability(device=None):
        torch._dynamo.graph_break()  # torch.compile must not trace device queries (see the compile test)
        return gpu["capability"]

    return {"is_available": lambda: True, "device_count": lambda: 1, "current_device": lambda: 0,
            "get_device_capability": capability, "get_device_name": lambda device=None: "Fake GPU"}


@pytest.fixture
def fake_gpu(monkeypatch):
    """One visible GPU of a chosen capability (7.5 unless changed), and a _C built like the wheel
    (SASS for 8.0 and 9.0, PTX for 9.0). torch.cuda itself is faked, for gmk info."""
    gpu = {"capability": (7, 5)}
    for name, function in fake_cuda(gpu).items():
        monkeypatch.setattr(torch.cuda, name, function)
    monkeypatch.setattr(_backend, "BUILD_INFO", {**_extension.BUILD_INFO, "with_cuda": True,
                                                 "cuda_version": "13.0", "cuda_archs": WHEEL_ARCHS})
    monkeypatch.setattr(_backend, "has_extension", lambda: True)
    _backend._CUDA_PROBLEMS.clear()
    yield gpu
    _backend._CUDA_PROBLEMS.clear()


@pytest.fixture
def fake_gpu_for_the_backends_only(monkeypatch):
    """As fake_gpu, but only gmkernels._backend sees the GPU: torch.compile's own CUDA checks see none."""
    gpu = {"capability": (7, 5)}
    torch_seen = types.SimpleNamespace(**{name: getattr(torch, name) for name in ("device", "compiler")},
                                       cuda=types.SimpleNamespace(**fake_cuda(gpu)))
    monkeypatch.setattr(_backend, "torch", torch_seen)
    monkeypatch.setattr(_backend, "BUILD_INFO", {**_extension.BUILD_INFO, "with_cuda": True,
                                                 "cuda_version": "13.0", "cuda_archs": WHEEL_ARCHS})
    monkeypatch.setattr(_backend, "has_extension", lambda: True)
    _backend._CUDA_PROBLEMS.clear()
    yield gpu
    _backend._CUDA_PROBLEMS.clear()


CUDA = torch.device("cuda", 0)


def test_no_cuda_backend_on_an_arch_the_build_lacks(fake_gpu):
    assert "cuda" not in gmk.available_backends("cuda")
    problem = _backend.cuda_kernels_problem(CUDA)
    assert "GPU 0 (Fake GPU)" in problem and "sm_75" in problem
    assert "SASS for 8.0, 9.0 and PTX for 9.0" in problem and 'GMK_CUDA_ARCHS="7.5"' in problem


@pytest.mark.skipif(not TRITON_INSTALLED, reason="triton is not installed")
def test_auto_falls_back_to_triton_on_an_arch_the_build_lacks(fake_gpu):
    assert GATED.select("auto", CUDA, torch.float32) == "triton"
    assert GATED.select("auto", torch.device("cuda"), torch.float16) == "triton"


@pytest.mark.parametrize("capability", [(8, 0), (8, 6), (9, 0), (12, 0)])
def test_cuda_backend_on_the_archs_the_build_covers(fake_gpu, capability):
    fake_gpu["capability"] = capability  # before the first query: each GPU's answer is kept
    assert _backend.cuda_kernels_problem(CUDA) is None
    assert "cuda" in gmk.available_backends("cuda")
    assert GATED.select("auto", CUDA, torch.float32) == "cuda"


def test_an_explicit_cuda_call_says_why_not(fake_gpu):
    with pytest.raises(ValueError, match=r"gated: backend 'cuda' was requested but .*GPU 0 \(Fake GPU\): "
                                         r"gmkernels._C holds no kernel for sm_75.*GMK_CUDA_ARCHS=\"7.5\""):
        GATED.select("cuda", CUDA, torch.float32)
    with pytest.raises(ValueError, match="sm_75"), gmk.use_backend("cuda"):
        GATED.select("auto", CUDA, torch.float32)


def test_a_build_without_cuda_says_so(fake_gpu, monkeypatch):
    monkeypatch.setattr(_backend, "BUILD_INFO", {**_backend.BUILD_INFO, "with_cuda": False, "cuda_archs": []})
    assert _backend.cuda_kernels_problem(CUDA) == "gmkernels._C was built without its CUDA kernels"
    with pytest.raises(ValueError, match="built without its CUDA kernels"):
        GATED.select("cuda", CUDA, torch.float32)


def test_gmk_info_names_the_gpu_the_build_lacks(fake_gpu):
    lines = cli.info_lines()
    gpu_line = next(line for line in lines if line.startswith("GPU 0 "))
    assert "Fake GPU (sm_75)" in gpu_line and "no CUDA kernels" in gpu_line and "sm_75" in gpu_line
    backends = next(line for line in lines if line.startswith("backends cuda "))
    assert "cuda" not in backends.removeprefix("backends cuda").split(", ")


def test_gmk_info_names_the_code_a_covered_gpu_runs(fake_gpu):
    fake_gpu["capability"] = (8, 6)
    gpu_line = next(line for line in cli.info_lines() if line.startswith("GPU 0 "))
    assert gpu_line.endswith("Fake GPU (sm_86): CUDA kernels from SASS 8.0")


def test_the_choice_compiles_without_tracing_device_queries(fake_gpu_for_the_backends_only):
    """torch.compile(fullgraph=True) of code that picks a backend: the device query is not traced
    (the fake capability query breaks the graph if it is)."""
    torch._dynamo.reset()
    try:
        @torch.compile(fullgraph=True, backend="eager")
        def pick(x):
            return x + 1 if GATED.select("auto", CUDA, torch.float32) == "cuda" else x - 1
        assert pick(torch.zeros(2)).tolist() == [-1.0, -1.0]  # sm_75: not cuda
        fake_gpu_for_the_backends_only["capability"] = (9, 0)
        _backend._CUDA_PROBLEMS.clear()
        torch._dynamo.reset()
        assert pick(torch.zeros(2)).tolist() == [1.0, 1.0]
    finally:
        torch._dynamo.reset()


# --- the build record beside _C ---

RECORD = {"torch_version": "2.14.1+cu130", "torch_cuda": "13.0", "with_cuda": True, "cuda_archs": "80-real;90"}


def test_the_same_torch_minor_loads():
    assert _extension.torch_mismatch(RECORD, "2.14.0", "13.0") is None
    assert _extension.torch_mismatch(RECORD, "2.14.3+cu131", "13.1") is None


def test_another_torch_minor_is_refused_naming_both_and_the_fixes():
    problem = _extension.torch_mismatch(RECORD, "2.15.0+cu130", "13.0")
    assert "built against torch 2.14.1+cu130 but torch 2.15.0+cu130 is installed" in problem
    assert 'pip install "torch==2.14.*"' in problem and "--no-build-isolation" in problem


def test_a_cuda_build_under_a_cpu_only_torch_is_refused():
    problem = _extension.torch_mismatch(RECORD, "2.14.1+cpu", None)
    assert "CPU-only build" in problem and "GMK_BUILD_CUDA=0" in problem
    assert _extension.torch_mismatch({**RECORD, "with_cuda": False, "cuda_archs": None}, "2.14.1+cpu", None) is None


def test_another_cuda_major_is_refused():
    problem = _extension.torch_mismatch(RECORD, "2.14.1+cu128", "12.8")
    assert "CUDA 13.0" in problem and "CUDA 12.8" in problem


def test_the_record_matches_the_loaded_extension():
    if not _extension.BUILD_RECORD.exists():
        pytest.skip("no _C_build.json beside _C: built before setup.py wrote records")
    record = json.loads(_extension.BUILD_RECORD.read_text())
    info = gmk.build_info()
    assert record["torch_version"] == info["torch_version"] == torch.__version__
    assert record["with_cuda"] == info["with_cuda"]
    if record["with_cuda"]:
        assert [_extension._arch_name(arch) for arch in record["cuda_archs"].split(";")] == info["cuda_archs"]


def test_import_under_another_torch_minor_fails_with_the_clear_error():
    """In a fresh process whose torch claims another minor version, `import gmkernels` raises the ImportError."""
    if not _extension.BUILD_RECORD.exists():
        pytest.skip("no _C_build.json beside _C: built before setup.py wrote records")
    script = ("import torch\n"
              "torch.__version__ = '2.99.0'\n"
              "try:\n"
              "    import gmkernels\n"
              "except ImportError as error:\n"
              "    print('ImportError:', error)\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert f"built against torch {torch.__version__} but torch 2.99.0 is installed" in result.stdout, result.stdout


# --- setup.py ---

def test_setup_py_arch_choice(monkeypatch):
    setup_py = load_setup_py()
    monkeypatch.setenv("GMK_CUDA_ARCHS", "8.0;9.0")
    assert setup_py.cuda_archs(torch) == ("8.0;9.0", "from GMK_CUDA_ARCHS")
    monkeypatch.delenv("GMK_CUDA_ARCHS")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    archs, why = setup_py.cuda_archs(torch)
    assert archs == setup_py.DEFAULT_CUDA_ARCHS
    assert "no GPU is visible" in why and "GMK_CUDA_ARCHS" in why
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 9))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Fake GPU")
    assert setup_py.cuda_archs(torch) == ("8.9", "the local GPU (Fake GPU); GMK_CUDA_ARCHS overrides")


def test_setup_py_default_archs_cover_every_gpu_from_turing_on():
    setup_py = load_setup_py()
    archs = [name for name in setup_py.cmake_arch_list(setup_py.DEFAULT_CUDA_ARCHS).split(";")]
    names = [_extension._arch_name(arch) for arch in archs]
    for capability in [(7, 5), (8, 0), (8, 6), (8, 7), (8, 9), (9, 0), (10, 0), (10, 3), (12, 0), (12, 1)]:
        assert kernel_image_for(capability, names) is not None, capability


def test_setup_py_cmake_arch_list():
    setup_py = load_setup_py()
    assert setup_py.cmake_arch_list("8.0;9.0") == "80-real;90"
    assert setup_py.cmake_arch_list("9.0a") == "90a"
    assert setup_py.cmake_arch_list(" 8.6, 12.0 ") == "86-real;120"


def test_setup_py_says_cuda_off_explicitly(monkeypatch):
    """A build tree configured with CUDA before must not keep its cached GMK_WITH_CUDA=ON."""
    setup_py = load_setup_py()
    monkeypatch.setenv("GMK_BUILD_CUDA", "0")
    assert setup_py.cuda_cmake_args(torch) == (["-DGMK_WITH_CUDA=OFF"], None, "gmkernels: building CPU kernels only")


@pytest.mark.skipif(not (torch.version.cuda and load_setup_py().find_nvcc()), reason="needs torch's CUDA build and nvcc")
def test_setup_py_cuda_args(monkeypatch):
    setup_py = load_setup_py()
    monkeypatch.setenv("GMK_BUILD_CUDA", "1")
    monkeypatch.setenv("GMK_CUDA_ARCHS", "8.0;9.0")
    args, cmake_archs, message = setup_py.cuda_cmake_args(torch)
    assert "-DGMK_WITH_CUDA=ON" in args and "-DCMAKE_CUDA_ARCHITECTURES=80-real;90" in args
    assert cmake_archs == "80-real;90"
    assert message.startswith("gmkernels: building CUDA kernels for 8.0;9.0 (SASS for each, PTX for the last)")
    assert message.endswith("from GMK_CUDA_ARCHS")


def test_setup_py_pins_the_torch_minor_built_against(monkeypatch):
    setup_py = load_setup_py()
    monkeypatch.setattr(torch, "__version__", "2.14.1+cu130")
    assert setup_py.torch_requirement() == "torch>=2.14,<2.15"
    monkeypatch.setattr(torch, "__version__", "3.0.0")
    assert setup_py.torch_requirement() == "torch>=3.0,<3.1"


def test_sdist_manifest_holds_the_build_inputs():
    manifest = (ROOT / "MANIFEST.in").read_text()
    assert "include CMakeLists.txt" in manifest
    assert "recursive-include csrc" in manifest and "*.cu" in manifest and "*.h" in manifest
