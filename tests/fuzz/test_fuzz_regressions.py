"""Every failure the fuzz suite found, kept as an explicit draw judged on every backend (all fixed).

Each names the bug it caught; the draws are the shrunk examples hypothesis printed.
"""
import math

import pytest
import torch

import gmkernels as gmk

from .harness import Draw, Layout, TensorSpec, failures_of, judge
from .modules import MODULES
from .ops import OPS_BY_NAME

MODULES_BY_NAME = {module.name: module for module in MODULES}


def T(shape, dtype=torch.float32, **kwargs):  # noqa: N802 - the harness' short form
    return TensorSpec(tuple(shape), dtype, **kwargs)


REGRESSIONS = {
    # the reference ran F.conv2d with groups=C, which refuses C = 0 ("non-positive groups"), unnamed
    "upfirdn2d-zero-channels": ("upfirdn2d", Draw({"x": T((2, 0, 4, 5)), "f": T((3,), values="unit"), "up": 2,
                                                   "down": 1, "padding": 1, "flip_filter": False, "gain": 1.0},
                                                  grads=("x",), terms=9)),
    "filter2d-zero-channels": ("filter2d", Draw({"x": T((1, 0, 3, 3)), "f": T((2, 2), values="unit"),
                                                 "padding": 0, "flip_filter": True, "gain": 1.0}, grads=("x",))),
    # the reference's conv1x1 ran F.conv2d on an empty spatial dimension ("Kernel size can't be greater")
    "actnorm_conv1x1-empty-width": ("actnorm_conv1x1", Draw({
        "x": T((2, 3, 4, 0)), "bias": T((3,)), "log_scale": T((3,), scale=0.3),
        "weight": T((3, 3), values="near_identity", scale=0.3), "reverse": False},
        grads=("x", "bias", "log_scale", "weight"), terms=3)),
    "invertible_conv1x1-empty-height-reverse": ("invertible_conv1x1", Draw({
        "x": T((1, 2, 0, 3)), "weight": T((2, 2), values="near_identity", scale=0.3), "reverse": True},
        grads=("x", "weight"), terms=2)),
    # an int option past int64 reached F.conv2d / the C++ schema (an unnamed overflow TypeError)
    "cached_conv2d-stride-2**63": ("cached_conv2d", Draw({"rows": T((2, 2, 2, 6)), "weight": T((5, 2, 2, 2)),
                                                          "bias": T((5,)), "column": 3, "count": 1, "stride": 2**63},
                                                         terms=8)),
    "causal_conv1d-dilation-2**63": ("causal_conv1d", Draw({"x": T((1, 2, 3)), "weight": T((2, 2, 2)), "bias": None,
                                                            "dilation": 2**63}, grads=("x",), terms=4)),
    # a NaN residual_scale was accepted; the gradients then differed between backends
    "wavenet_layer-nan-residual_scale": ("wavenet_layer", Draw({
        "x": T((1, 1, 1)), "conv_weight": T((2, 1, 2)), "conv_bias": None, "res_weight": T((1, 1)),
        "res_bias": None, "skip_weight": T((1, 1)), "skip_bias": None, "cond": None, "dilation": 1,
        "residual_scale": math.nan}, grads=("x", "conv_weight", "res_weight", "skip_weight"), terms=5)),
    # the range check read a meta tensor's values (Tensor.item() on meta, unnamed)
    "mu_law_decode-meta": ("mu_law_decode", Draw({"classes": T((31,), torch.int64, values="classes:256",
                                                               device="meta"), "num_classes": 256})),
    # taps on the meta device reached .to(device): torch's NotImplementedError ("Cannot copy out of meta
    # tensor"), unnamed; now a ValueError naming f
    "setup_filter-meta-taps": ("setup_filter", Draw({"f": T((1,), values="unit", device="meta"), "normalize": False,
                                                     "flip_filter": False, "gain": 4.0, "separable": True})),
    # ragged taps reached torch.as_tensor ("expected sequence of length 2 at dim 1", unnamed)
    "setup_filter-ragged-taps": ("setup_filter", Draw({"f": [[1.0, 2.0], [3.0]], "normalize": True,
                                                       "flip_filter": False, "gain": 1.0, "separable": None})),
    # a size past int64 reached torch.zeros (an unnamed overflow TypeError)
    "conv_mask-out_channels-2**63": ("conv_mask", Draw({"kernel_size": 5, "mask_type": "B", "in_channels": 2,
                                                        "out_channels": 2**63, "color_groups": 1})),
    # mask A at a 1x1 image: every live tap reads the zero padding; the reference's F.conv2d multiplied the
    # masked-out centre (weight 0) by x = inf and gave NaN, the cpu and Triton kernels skip it (finite)
    "masked_conv2d-mask-A-inf-centre": ("masked_conv2d", Draw({
        "x": T((1, 1, 1, 1), values="sign", scale=float("inf")), "weight": T((2, 1, 3, 3)), "bias": T((2,)),
        "cond": None, "mask_type": "A", "color_groups": 1, "gate": None})),
    # a NaN in a masked weight: the reference's weight * mask read it (NaN · 0), the kernels never do
    "masked_conv2d-nan-masked-weight": ("masked_conv2d", Draw({
        "x": T((2, 3, 4, 5)), "weight": T((3, 3, 3, 3), specials=True, seed=1), "bias": None, "cond": None,
        "mask_type": "B", "color_groups": 1, "gate": None}, terms=15)),
    # colour groups, inf inputs: at the centre tap the kernels multiply the channels an output's group does
    # not see by a zero weight (NaN where the reference's formula is finite: not compared, see
    # docs/finite-ranges.md, "Comparison rules"); elsewhere they agree
    "masked_conv2d-groups-inf-x": ("masked_conv2d", Draw({
        "x": T((1, 6, 3, 3), specials=True, seed=3), "weight": T((6, 6, 3, 3)), "bias": T((6,)), "cond": None,
        "mask_type": "A", "color_groups": 3, "gate": None}, terms=30)),
    # the gate of an inf pre-activation is finite (tanh(±inf) σ(±inf)); the Triton layer gave NaN
    # (the gate rows past R, 0 · inf of the weight padding, entered the 1x1s)
    "wavenet_layer-triton-inf": ("wavenet_layer", Draw({
        "x": T((1, 1, 1), values="sign", scale=float("inf")), "conv_weight": T((2, 1, 2)), "conv_bias": None,
        "res_weight": T((1, 1)), "res_bias": None, "skip_weight": T((1, 1)), "skip_bias": None, "cond": None,
        "dilation": 1, "residual_scale": 1.0})),
    # an inf/NaN weight at a tap that reads the zeros before the start: 0 · inf = NaN in the reference's
    # F.conv1d and the Triton GEMM; the cpu kernel skipped those taps (finite)
    "causal_conv1d-nonfinite-weight-at-padding": ("causal_conv1d", Draw({
        "x": T((1, 1, 2), seed=1, specials=True), "weight": T((2, 1, 2), seed=2, specials=True), "bias": None,
        "dilation": 1}, grads=("x", "weight", "bias"), terms=4)),
    "wavenet_layer-nonfinite-weight-at-padding": ("wavenet_layer", Draw({
        "x": T((1, 1, 3)), "conv_weight": T((2, 1, 4), seed=13, specials=True), "conv_bias": None,
        "res_weight": T((1, 1)), "res_bias": None, "skip_weight": T((1, 1)), "skip_bias": None, "cond": None,
        "dilation": 1, "residual_scale": 1.0})),
    # log_scale_min = 1e30 was accepted: every scale infinite, terms of -3e30 whose rounding (float64's too)
    # swallowed the log-softmax, so the responsibilities were the rounding's (kernels and reference differed
    # by a factor 3); now a ValueError naming log_scale_min (at most log(float32 max) = 88.72)
    "discretized_logistic_mixture_nll-log_scale_min-1e30": ("discretized_logistic_mixture_nll", Draw({
        "params": T((2, 30), seed=107928), "x": T((2, 3), values="grid:256", seed=107929), "num_bins": 256,
        "log_scale_min": 1e30, "reduction": "none"}, grads=("params",))),
    # found by the 1000-draw campaign:
    # T = 1, dilation 3: taps 0 and 1 reach back T or more and read zeros only; the reference left them out
    # (finite) where the cpu and Triton kernels multiply their zeros by an inf weight (NaN); the reference
    # now adds W_j · 0 for them too
    "causal_conv1d-nonfinite-weight-past-T": ("causal_conv1d", Draw({
        "x": T((5, 2, 1), seed=7254462, specials=True), "weight": T((2, 2, 3), seed=7254463, specials=True),
        "bias": None, "dilation": 3}, grads=("x", "weight", "bias"), terms=6)),
    # N = 0 (no positions) and a singular W (an expanded weight: equal rows): the gradient of log|det W|,
    # 0 · W⁻ᵀ, was NaN; it is now exactly 0 where the log-determinant has weight 0
    "actnorm_conv1x1-no-positions-singular-weight": ("actnorm_conv1x1", Draw({
        "x": T((0, 4, 1), seed=350), "bias": T((4,), seed=351), "log_scale": T((4,), scale=0.3, seed=352),
        "weight": T((4, 4), layout=Layout((0, 1), (1, 1), zero=0), values="near_identity", scale=0.3, seed=353),
        "reverse": False}, grads=("x", "bias", "log_scale", "weight"), terms=4)),
    # NaN/inf in x and the codebook: scores of inf - inf; which code wins is not defined by the formula
    # (NaN in one summation order, ±inf in another), so those positions are not compared (ops.near_tie_codes)
    "vector_quantize-nonfinite-codebook": ("vector_quantize", Draw({
        "x": T((2, 4, 4), seed=51, specials=True), "codebook": T((2, 2), seed=52, specials=True), "dim": 0,
        "return_distance": True}, grads=("x", "codebook"), terms=2, seed=50)),
    # a separable filter in float16: two passes, each rounded to float16; judged with two roundings'
    # tolerance (an x gradient was 0.002 off where one rounding allows 0.0008)
    "filter2d-separable-float16": ("filter2d", Draw({
        "x": T((2, 4, 8, 2), torch.float16, layout=Layout((0, 1, 2, 3), (1, 1, 1, 1), offset=1), seed=30503384),
        "f": T((4,), values="unit", seed=30503383), "padding": (2, -2), "flip_filter": False, "gain": 4.0},
        grads=("x",), terms=16, seed=30503382)),
    # quantized = codebook[index] at x = inf on the kernels; the reference's x + (q - x) gave NaN
    "vector_quantize-inf-x": ("vector_quantize", Draw({
        "x": T((1, 2, 1), values="sign", scale=float("inf")), "codebook": T((3, 2)), "dim": 1,
        "return_distance": False})),
    # W with equal columns (an expanded weight, rank 1): the kernels' LU found pivots of ~1e-34 (log|det W|
    # -234, and an inverse in reverse) where the reference's slogdet found a zero (-inf, LinAlgError); one
    # rule now, on every backend: a pivot at most C · eps · max|W| makes W singular
    "invertible_conv1x1-singular-to-working-precision-reverse": ("invertible_conv1x1", Draw({
        "x": T((1, 4, 3, 11), layout=Layout((0, 1, 2, 3), (1, 1, 1, 1), zero=2), seed=3),
        "weight": T((4, 4), layout=Layout((0, 1), (1, 1), zero=1), values="near_identity", scale=0.3, seed=4),
        "reverse": True}, grads=("x", "weight"), terms=4, seed=2)),
    "invertible_conv1x1-singular-to-working-precision": ("invertible_conv1x1", Draw({
        "x": T((2, 5, 8), layout=Layout((0, 1, 2), (1, 1, 1), zero=0), seed=229),
        "weight": T((5, 5), layout=Layout((0, 1), (1, 1), zero=1), values="near_identity", scale=0.3, seed=230),
        "reverse": False}, grads=("x", "weight"), terms=5, seed=228)),
    "actnorm_conv1x1-singular-to-working-precision": ("actnorm_conv1x1", Draw({
        "x": T((2, 4, 3), seed=479001602), "bias": T((4,), seed=479001603),
        "log_scale": T((4,), layout=Layout((0,), (1,), zero=0), scale=0.3, seed=479001604),
        "weight": T((4, 4), layout=Layout((0, 1), (1, 1), zero=1), values="near_identity", scale=0.3,
                    seed=479001605), "reverse": False},
        grads=("x", "bias", "log_scale", "weight"), terms=4, seed=479001601)),
    # a float16 log_scale: the gradients of its two uses (the matrix, the log-determinant) were rounded to
    # float16 and summed there, 0.0039 off where they cancel; it is cast to float64 once now
    "actnorm_conv1x1-float16-log_scale": ("actnorm_conv1x1", Draw({
        "x": T((5, 2, 6), torch.float16, seed=6550), "bias": T((2,), torch.float16, seed=6551),
        "log_scale": T((2,), torch.float16, layout=Layout((0,), (1,), offset=1), scale=0.3, seed=6552),
        "weight": T((2, 2), torch.float16, values="near_identity", scale=0.3, seed=6553), "reverse": False},
        grads=("x", "bias", "log_scale", "weight"), terms=2, seed=6549)),
    "actnorm_conv1x1_lu-float16-log_scale": ("actnorm_conv1x1_lu", Draw({
        "x": T((2, 5, 1, 3), seed=65537), "bias": T((5,), layout=Layout((0,), (1,), overlap=0), seed=65538),
        "log_scale": T((5,), torch.float16, scale=0.3, seed=65539), "lower": T((5, 5), seed=65540),
        "upper": T((5, 5), layout=Layout((0, 1), (1, 1), zero=0), scale=0.5, seed=65541),
        "log_s": T((5,), scale=0.2, seed=65542), "sign_s": T((5,), values="sign", seed=65543),
        "perm": T((5, 5), layout=Layout((1, 0), (1, 1)), values="permutation", seed=65544), "reverse": True},
        grads=("x", "bias", "log_scale", "lower", "upper", "log_s"), terms=5, seed=65536)),
    # NaN x and codes, 64 codes (a full Triton tile): every score NaN; the interpreter's argmin raised
    # InterpreterError("All-NaN slice encountered"); NaN scores now count as +inf (index 0 there)
    "vector_quantize-all-nan-scores": ("vector_quantize", Draw({
        "x": T((5,), seed=1207464910, specials=True), "codebook": T((64, 5), seed=1207464911, specials=True),
        "dim": 0, "return_distance": False}, grads=("x", "codebook"), terms=5, seed=1207464909)),
    # float16 swish with gain 2: the b gradient sums 384 terms of ~2, each rounded to float16 first (as torch's
    # autograd of x + b); 0.0092 off where the sum cancels to 1.6, beyond the table's 0.0039: now judged by
    # the rounding's 4σ bound (ops.bias_act_grad_bound, 0.042 here)
    "bias_act-float16-bias-gradient-of-rounded-terms": ("bias_act", Draw({
        "x": T((8, 16, 4, 6), torch.float16, layout=Layout((0, 1, 2, 3), (1, 1, 1, 1), overlap=3), seed=192),
        "b": T((8,), torch.float16, seed=193), "dim": 0, "act": "swish", "alpha": 0.0, "gain": 2.0,
        "clamp": None}, grads=("x", "b"), terms=1, seed=191)),
    # bfloat16 on Triton: z and grad_h rounded to bfloat16 for tl.dot (one more rounding than the CPU
    # kernels): 0.011 off for 0.01 allowed; judged with two roundings' tolerance on Triton
    # (ops.triton_rounds_half_intermediates)
    "wavenet_layer-bfloat16-triton-intermediates": ("wavenet_layer", Draw({
        "x": T((3, 5, 31), torch.bfloat16, seed=3), "conv_weight": T((10, 5, 2), torch.bfloat16, seed=4),
        "conv_bias": None, "res_weight": T((5, 5), torch.bfloat16, seed=5), "res_bias": None,
        "skip_weight": T((5, 5), torch.bfloat16, seed=6), "skip_bias": T((5,), torch.bfloat16, seed=7),
        "cond": None, "dilation": 2, "residual_scale": 0.7071067811865476},
        grads=("x", "conv_weight", "res_weight", "skip_weight", "skip_bias"), terms=25, seed=2)),
}

# Found in modules: judged by the module's FuzzOp (tests/fuzz/modules.py).
MODULE_REGRESSIONS = {
    # a meta input that Squeeze2d (a reshape) accepts: the harness compared values of meta outputs
    # (aten::equal has no meta kernel); now their shapes and devices
    "Squeeze2d-meta-input": ("nn.Squeeze2d", Draw({"num_channels": 2, "x": T((1, 2, 2, 2), device="meta")},
                                                 grads=("x",))),
    # bfloat16 x, code_dim 1: a position whose two best codes score within float32 rounding of each other took
    # another code on the kernels than on the reference; the near-tie rule (docs/finite-ranges.md) accepts
    # either code there, and only there
    "VectorQuantizer-bfloat16-near-tie": ("nn.VectorQuantizer", Draw({
        "num_codes": 4, "code_dim": 1, "commitment": 0.25, "ema": True, "decay": 0.99, "dead_code_threshold": 0.1,
        "x": T((1, 1, 3, 6), torch.bfloat16, seed=1)}, grads=("x",), terms=4)),
    "VectorQuantizer-bfloat16-near-tie-strided": ("nn.VectorQuantizer", Draw({
        "num_codes": 4, "code_dim": 1, "commitment": 0.0, "ema": True, "decay": 0.99, "dead_code_threshold": 0.0,
        "x": T((5, 1, 6, 7), torch.bfloat16, layout=Layout((0, 1, 2, 3), (1, 2, 1, 2)), seed=279)},
        grads=("x",), terms=4, seed=278)),
    # NaN taps reached the kernels: gradients at x positions no kept output reads were NaN on the reference
    # (its full convolution multiplies the dropped outputs' zero cotangents by NaN) and 0 on Triton;
    # setup_filter now refuses non-finite taps, naming the module and taps
    "Downsample2d-nan-taps": ("nn.Downsample2d", Draw({
        "taps": [1, math.nan], "factor": 2, "gain": 2.0,
        "x": T((3, 1, 5, 7), layout=Layout((0, 1, 2, 3), (1, 1, 1, 1), overlap=3), seed=87327)},
        grads=("x",), terms=16, seed=87326)),
    # N = 1, a 1x1 image: ActNorm initialises from one value per channel (std 0, e^s = 1/eps = 1e6), so the
    # fused actnorm + 1x1 sums terms 1e6 times its value; the rounding-error bound of that sum
    # (modules.fused_actnorm_bound), not the table's atol, is the tolerance
    "FlowStep-one-value-per-channel": ("nn.FlowStep", Draw({
        "num_channels": 2, "hidden_channels": 2, "transform": "glow", "layout": "halves", "lu": True,
        "x": T((1, 2, 1, 1), seed=1)}, grads=("x",), terms=16)),
}


@pytest.mark.parametrize("name", MODULE_REGRESSIONS)
def test_module_regression(name):
    module, draw = MODULE_REGRESSIONS[name]
    verdicts = judge(MODULES_BY_NAME[module], draw)
    assert not failures_of(verdicts), "\n".join(failures_of(verdicts))


@pytest.mark.parametrize("name", REGRESSIONS)
def test_regression(name):
    op_name, draw = REGRESSIONS[name]
    verdicts = judge(OPS_BY_NAME[op_name], draw)
    assert not failures_of(verdicts), "\n".join(failures_of(verdicts))


def test_cpp_wavenet_layer_rejects_nan_residual_scale():
    """The C++ op checks it too (called directly, without the public function's check)."""
    x, cw, rw, sw = torch.randn(1, 2, 3), torch.randn(4, 2, 2), torch.randn(2, 2), torch.randn(3, 2)
    with pytest.raises(ValueError, match="wavenet_layer: residual_scale must be a finite number"):
        torch.ops.gmkernels.wavenet_layer(x, cw, None, rw, None, sw, None, None, 1, math.nan)


@pytest.mark.parametrize("module", ["nn.ActNorm", "nn.AffineCoupling", "nn.FlowStep"])
def test_module_input_on_another_device(module):
    """A meta input to a CPU module: a clear error naming the input (ActNorm's data-dependent initialisation
    copied out of the meta tensor; AffineCoupling's network raised torch's unnamed device error)."""
    draw = Draw({"num_channels": 4, "x": T((2, 4, 2, 4), device="meta"),
                 **({"hidden_channels": 3} if module != "nn.ActNorm" else {})})
    verdicts = judge(MODULES_BY_NAME[module], draw)
    assert not failures_of(verdicts), "\n".join(failures_of(verdicts))
    assert all(outcome == "error" for outcome, _ in verdicts.values())


def test_setup_filter_meta_taps_on_meta():
    """Meta taps with device="meta": a meta filter of the shape the taps give (no values needed)."""
    assert gmk.setup_filter(torch.ones(3, device="meta"), device="meta").shape == (3, 3)
    assert gmk.setup_filter(torch.ones(9, device="meta"), device="meta").shape == (9,)
    with pytest.raises(ValueError, match="setup_filter: f is a tensor on the meta device"):
        gmk.setup_filter(torch.ones(3, device="meta"))


def test_cpp_logistic_mixture_rejects_huge_log_scale_min():
    """The C++ op checks it too (called directly, without the public function's check)."""
    params, x = torch.randn(1, 3, 4), torch.zeros(1, 1, 4)
    with pytest.raises(ValueError, match="log_scale_min must be <= 88.72"):
        torch.ops.gmkernels.logistic_mixture_nll(params, x, 256, 1e30)
