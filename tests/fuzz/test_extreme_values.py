"""Issue 16 (2): the ops with a numeric range at extreme inputs, in every dtype, on every backend.

The op's range-setting input holds ±m (random signs) for m = 1e4, the dtype's largest finite value and a
subnormal (the smallest normal / 4); the other inputs are ordinary. Each backend's outputs and gradients
must be finite wherever the reference's, computed in float64 on the same values and rounded to the
output's dtype, are finite (where the math is finite and representable), non-finite where those are, and
within the op's tolerance elsewhere (harness.judge). ``FINITE_EVERYWHERE`` holds the ops whose outputs
docs/finite-ranges.md states finite for every finite input; for those the float64 reference's outputs
are checked finite too, so the table cannot drift from the code.
"""
from dataclasses import replace

import pytest
import torch

from .harness import Draw, TensorSpec, build_args, failures_of, judge, run_once
from .ops import OPS_BY_NAME

DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def magnitudes(dtype):
    info = torch.finfo(dtype)
    return {"1e4": 1e4 if info.max > 1e4 else info.max, "max": info.max, "subnormal": info.tiny / 4}


def T(shape, dtype, **kwargs):  # noqa: N802
    return TensorSpec(tuple(shape), dtype, **kwargs)


def extreme(shape, dtype, m):
    return T(shape, dtype, values="sign", scale=m, seed=1)


def grid(shape, dtype):
    return T(shape, dtype, values="grid:256", seed=2)


ACTS = ("linear", "relu", "lrelu", "tanh", "sigmoid", "elu", "selu", "softplus", "swish")

# name -> (op, draw(dtype, m)); the draws' ordinary inputs are N(0, 1) or the mixture's grid
CASES = {
    "gated_activation": ("gated_activation", lambda d, m: Draw(
        {"x": extreme((2, 4, 3), d, m), "cond": None, "activation": "tanh", "dim": 1}, grads=("x",))),
    "gated_activation_identity": ("gated_activation", lambda d, m: Draw(
        {"x": extreme((2, 4, 3), d, m), "cond": None, "activation": "identity", "dim": 1}, grads=("x",))),
    **{f"bias_act_{act}": ("bias_act", lambda d, m, act=act: Draw(
        {"x": extreme((2, 3, 4), d, m), "b": T((3,), d, seed=3), "dim": 1, "act": act, "alpha": None,
         "gain": None, "clamp": None}, grads=("x", "b"))) for act in ACTS},
    "bias_act_clamp": ("bias_act", lambda d, m: Draw(
        {"x": extreme((2, 3, 4), d, m), "b": None, "dim": 1, "act": "lrelu", "alpha": None, "gain": None,
         "clamp": 256.0}, grads=("x",))),
    "mixture_nll_rgb": ("discretized_logistic_mixture_nll", lambda d, m: Draw(
        {"params": extreme((2, 20, 3), d, m), "x": grid((2, 3, 3), d), "num_bins": 256, "log_scale_min": -7.0,
         "reduction": "none"}, grads=("params",))),
    "mixture_nll_audio": ("discretized_logistic_mixture_nll", lambda d, m: Draw(
        {"params": extreme((2, 6, 5), d, m), "x": grid((2, 1, 5), d), "num_bins": 65536,
         "log_scale_min": -7.0, "reduction": "none"}, grads=("params",))),
    "mixture_sample_rgb": ("discretized_logistic_mixture_sample", lambda d, m: Draw(
        {"params": extreme((2, 20, 3), d, m), "num_channels": 3, "num_bins": 256, "log_scale_min": -7.0})),
    "actnorm_x": ("actnorm", lambda d, m: Draw(
        {"x": extreme((2, 3, 4), d, m), "bias": T((3,), d, seed=3), "log_scale": T((3,), d, scale=0.5, seed=4),
         "reverse": False}, grads=("x", "bias", "log_scale"))),
    "actnorm_log_scale": ("actnorm", lambda d, m: Draw(
        {"x": T((2, 3, 4), d, seed=3), "bias": T((3,), d, seed=4), "log_scale": extreme((3,), d, m),
         "reverse": True}, grads=("x", "bias", "log_scale"))),
    **{f"coupling_{transform}": ("affine_coupling", lambda d, m, transform=transform: Draw(
        {"x": extreme((2, 4, 3), d, m), "h": extreme((2, 2 if transform == "additive" else 4, 3), d, m),
         "transform": transform, "layout": "halves", "reverse": False}, grads=("x", "h")))
       for transform in ("glow", "realnvp", "additive")},
    "coupling_glow_reverse": ("affine_coupling", lambda d, m: Draw(
        {"x": extreme((2, 4, 3), d, m), "h": extreme((2, 4, 3), d, m), "transform": "glow", "layout": "halves",
         "reverse": True}, grads=("x", "h"))),
    "invertible_conv1x1": ("invertible_conv1x1", lambda d, m: Draw(
        {"x": extreme((2, 3, 4), d, m), "weight": T((3, 3), d, values="near_identity", scale=0.3, seed=3),
         "reverse": False}, grads=("x", "weight"), terms=3)),
    "actnorm_conv1x1": ("actnorm_conv1x1", lambda d, m: Draw(
        {"x": extreme((2, 3, 4), d, m), "bias": T((3,), d, seed=3), "log_scale": T((3,), d, scale=0.3, seed=4),
         "weight": T((3, 3), d, values="near_identity", scale=0.3, seed=5), "reverse": False},
        grads=("x", "bias", "log_scale", "weight"), terms=3)),
    "upfirdn2d": ("upfirdn2d", lambda d, m: Draw(
        {"x": extreme((1, 2, 5, 5), d, m), "f": T((4,), torch.float32, values="unit", seed=3), "up": 2, "down": 1,
         "padding": 2, "flip_filter": False, "gain": 4.0}, grads=("x",), terms=16)),
}

# The cases whose outputs and gradients are sums of terms bounded by the op on the inputs' magnitudes: where
# that bound passes the dtype's max and the value does not, the order of summation decides whether a partial
# sum overflows, and those positions are not compared (harness.loose_positions; docs/finite-ranges.md,
# "Comparison rules").
SUMS_OF_TERMS = {"invertible_conv1x1", "actnorm_conv1x1", "coupling_realnvp", "upfirdn2d"}

# The cases whose outputs docs/finite-ranges.md states finite for every finite input (any magnitude).
FINITE_EVERYWHERE = {"gated_activation", "bias_act_linear", "bias_act_tanh", "bias_act_sigmoid", "bias_act_elu",
                     "bias_act_softplus", "bias_act_clamp", "mixture_sample_rgb"}

# (case, magnitude) -> (the dtypes it fails in, why): found by this test, open (docs/finite-ranges.md lists
# them); none now
KNOWN: dict = {}


def cases():
    for name in CASES:
        for dtype in DTYPES:
            for magnitude in ("1e4", "max", "subnormal"):
                dtypes, why = KNOWN.get((name, magnitude), ((), ""))
                marks = [pytest.mark.xfail(reason=why, strict=True)] if dtype in dtypes else []
                yield pytest.param(name, dtype, magnitude, id=f"{name}-{str(dtype)[6:]}-{magnitude}", marks=marks)


@pytest.mark.parametrize(("name", "dtype", "magnitude"), cases())
def test_extreme_values(name, dtype, magnitude):
    op_name, make = CASES[name]
    op = OPS_BY_NAME[op_name]
    draw = replace(make(dtype, magnitudes(dtype)[magnitude]), compute_dtype_range=True,
                   sums_of_terms=name in SUMS_OF_TERMS)
    verdicts = judge(op, draw)
    assert not failures_of(verdicts), "\n".join(failures_of(verdicts))
    assert verdicts["reference"][0] == "match", f"the reference refused the draw: {verdicts['reference'][1]}"
    if name in FINITE_EVERYWHERE:
        args, _ = build_args(draw.args)
        result = run_once(op, args, "reference", draw)
        for out in result.outputs:
            assert out.isfinite().all(), f"{name}: non-finite output at finite inputs of magnitude {magnitude}"
