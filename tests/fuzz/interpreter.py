"""Triton's interpreter (CPU, TRITON_INTERPRET=1) with exact float32 <-> bfloat16 casts, as the GPU's.

Its casts go through ``triton.runtime.interpreter._convert_float``, which renormalises a subnormal input
and then clamps its exponent at 0: a subnormal bfloat16 loads as a wrong float32, and a float32 that rounds
to a subnormal bfloat16 stores as 0 (seen in bias_act at x = finfo(bfloat16).tiny / 4, whose lrelu slope
read off the stored y then changed from 1 to alpha). The hardware's conversions keep subnormals; bfloat16
is float32's upper half, so both directions are exact bit operations (to nearest even, or toward zero when
the cast asks for it). The fuzz suite judges the kernels, not the interpreter, so it runs with these.
"""
from __future__ import annotations

import numpy as np
import torch

try:
    import triton.language as tl
    from triton.runtime import interpreter
except ImportError:  # no Triton: nothing to patch
    interpreter = None


def _float32_of_bfloat16(values: np.ndarray) -> np.ndarray:
    bits = np.ascontiguousarray(values).view(np.uint16).astype(np.uint32) << 16
    return bits.view(np.float32).reshape(np.shape(values))


def _bfloat16_bits(values: np.ndarray, toward_zero: bool) -> np.ndarray:
    floats = np.ascontiguousarray(values).view(np.float32)
    if toward_zero:
        bits = (floats.view(np.uint32) >> 16).astype(np.uint16)
    else:  # torch's cast: to nearest even, subnormals kept
        bits = torch.from_numpy(floats.copy()).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    return bits.reshape(np.shape(values))


def install() -> None:
    if interpreter is None or getattr(interpreter._convert_float, "exact_bfloat16", False):
        return
    original = interpreter._convert_float

    def convert(values, input_dtype, output_dtype, rounding_mode):
        if input_dtype == tl.bfloat16 and output_dtype == tl.float32:
            return _float32_of_bfloat16(values)
        if input_dtype == tl.float32 and output_dtype == tl.bfloat16:
            toward_zero = rounding_mode is not None and rounding_mode == interpreter._ir.ROUNDING_MODE.RTZ
            return _bfloat16_bits(values, toward_zero)
        return original(values, input_dtype, output_dtype, rounding_mode)

    convert.exact_bfloat16 = True
    interpreter._convert_float = convert
