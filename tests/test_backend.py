"""Backend names, what can run where, and use_backend's stack (gmkernels/_backend.py)."""
import importlib.util
import os

import pytest
import torch

import gmkernels as gmk
from gmkernels._backend import requested_backend

TRITON_ON_CPU = os.environ.get("TRITON_INTERPRET") == "1" and importlib.util.find_spec("triton") is not None


@pytest.fixture(autouse=True)
def no_env_backend(monkeypatch):
    monkeypatch.delenv("GMK_BACKEND", raising=False)


def test_backend_names():
    assert gmk.BACKENDS == ("auto", "reference", "cpu", "cuda", "triton")


@pytest.mark.parametrize("device", ["cpu", torch.device("cpu")])
def test_available_backends_on_cpu(device):
    expected = ["reference"] + ["cpu"] * gmk.has_extension() + ["triton"] * TRITON_ON_CPU
    assert gmk.available_backends(device) == expected


def test_triton_runs_cpu_tensors_only_in_the_interpreter(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert "triton" not in gmk.available_backends("cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present")
def test_nothing_but_the_reference_runs_cuda_tensors_without_a_gpu():
    assert gmk.available_backends("cuda") == ["reference"]


def test_only_the_reference_runs_meta_tensors():
    assert gmk.available_backends("meta") == ["reference"]


def test_use_backend_nests_and_restores():
    assert requested_backend("auto") == "auto"
    with gmk.use_backend("reference"):
        assert requested_backend("auto") == "reference"
        with gmk.use_backend("cpu"):
            assert requested_backend("auto") == "cpu"
            assert requested_backend("triton") == "triton"  # the call's own choice wins
        assert requested_backend("auto") == "reference"
    assert requested_backend("auto") == "auto"


def test_use_backend_restores_after_an_exception():
    with gmk.use_backend("reference"):
        with pytest.raises(RuntimeError, match="inner"):
            with gmk.use_backend("cpu"):
                raise RuntimeError("inner")
        assert requested_backend("auto") == "reference"
    assert requested_backend("auto") == "auto"


def test_use_backend_beats_the_environment(monkeypatch):
    monkeypatch.setenv("GMK_BACKEND", "reference")
    assert requested_backend("auto") == "reference"
    with gmk.use_backend("cpu"):
        assert requested_backend("auto") == "cpu"


def test_invalid_use_backend_raises_and_leaves_no_trace():
    with pytest.raises(ValueError, match="backend"):
        with gmk.use_backend("fastest"):
            pass
    assert requested_backend("auto") == "auto"


def test_invalid_environment_backend_raises(monkeypatch):
    monkeypatch.setenv("GMK_BACKEND", "fastest")
    with pytest.raises(ValueError, match="backend.*'fastest'"):
        gmk.gated_activation(torch.randn(2, 4))
