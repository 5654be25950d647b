"""The fuzz suite's exact bfloat16 casts under Triton's interpreter (tests/fuzz/interpreter.py)."""
import numpy as np
import pytest
import torch

from .interpreter import interpreter

pytestmark = pytest.mark.skipif(interpreter is None, reason="Triton is not installed")


def special_floats() -> torch.Tensor:
    tiny = torch.finfo(torch.float32).tiny
    values = [0.0, -0.0, 1.0, -2.5, tiny, tiny / 4, -tiny / 3, 1.4e-45, 3.0e38, 3.4028235e38, float("inf"),
              float("-inf"), float("nan")]
    return torch.cat([torch.tensor(values), torch.randn(64, generator=torch.Generator().manual_seed(0)) * 1e-39])


def test_float32_to_bfloat16_rounds_as_torch():
    import triton.language as tl
    floats = special_floats()
    bits = interpreter._convert_float(floats.numpy(), tl.float32, tl.bfloat16, None)
    got = torch.from_numpy(bits.view(np.int16).copy()).view(torch.bfloat16)
    torch.testing.assert_close(got, floats.to(torch.bfloat16), atol=0, rtol=0, equal_nan=True)
    assert (got.float().abs() > 0).sum() > 60, "the subnormals must not flush to zero"


def test_bfloat16_to_float32_is_exact():
    import triton.language as tl
    halves = special_floats().to(torch.bfloat16)
    floats = interpreter._convert_float(halves.view(torch.int16).numpy().view(np.uint16), tl.bfloat16,
                                        tl.float32, None)
    torch.testing.assert_close(torch.from_numpy(floats.copy()), halves.float(), atol=0, rtol=0, equal_nan=True)
