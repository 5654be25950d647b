"""Every gmkernels.nn module as a FuzzOp: drawn constructor arguments (valid, or one of them bad) and an
input; the module is built with the same seed for every backend and run under ``gmk.use_backend``.

A bad constructor argument must raise a clear error naming the module and the argument; the forward
must give the reference backend's result (the module's own float32 parameters: the float64 oracle does
not apply, so the tolerance is the float32 sum tolerance, four times over for the reference's roundings).
"""
from __future__ import annotations

import math

import torch
from hypothesis import strategies as st

import gmkernels as gmk
import gmkernels.nn as gnn

from .harness import Draw, FuzzOp
from .harness import Result
from .ops import BAD_BOOLS, BAD_CHOICES, _along, composite, every_centre_pair, near_tie_codes
from .strategies import BAD_FLOATS, BAD_INTS, SMALL, capped, size

CHANNELS = st.integers(1, 4)
# bad sizes without the huge ones: a module allocates its parameters from them (2**31 channels is an 8 GB
# allocation, not an argument error)
BAD_SIZES = tuple(v for v in BAD_INTS if not (isinstance(v, int) and v > 2**20))


def module_call(cls, input_names=("x",)):
    def call(a, backend):
        kwargs = {name: value for name, value in a.items() if name not in input_names}
        torch.manual_seed(0)  # the same parameters for every backend
        module = cls(**kwargs)
        inputs = [a[name] for name in input_names]
        with gmk.use_backend(backend):
            return module(*inputs)
    return call


def image(b, name, channels, dtype=torch.float32, most=7):
    shape = capped([size(b.draw, SMALL), channels, b.draw(st.integers(1, most)), b.draw(st.integers(1, most))],
                   keep=(1,), limit=1024)
    return b.tensor(name, shape, dtype)


@composite(("x", "num_channels", "eps"))
def actnorm_draws(b):
    c = b.option("num_channels", CHANNELS, BAD_SIZES)
    return Draw({"num_channels": c, "eps": b.option("eps", (1e-6,), BAD_FLOATS[:4]),
                 "x": image(b, "x", c if isinstance(c, int) and c > 0 else 2)}, grads=("x",), seed=b.seed)


@composite(("x", "channels", "negative_slope", "scale", "bias"))
def leaky_draws(b):
    c = b.option("channels", CHANNELS, BAD_SIZES)
    return Draw({"channels": c, "negative_slope": b.option("negative_slope", (0.2, 0.0), BAD_FLOATS[:3]),
                 "scale": b.option("scale", (2 ** 0.5, 1.0), BAD_FLOATS[:3]),
                 "bias": b.option("bias", (True, False), BAD_BOOLS),
                 "x": image(b, "x", c if isinstance(c, int) and c > 0 else 2)}, grads=("x",), seed=b.seed)


@composite(("x", "in_channels", "out_channels", "kernel_size", "dilation", "bias"))
def causal_draws(b):
    c_in, c_out = b.option("in_channels", CHANNELS, BAD_SIZES), b.option("out_channels", CHANNELS, BAD_SIZES)
    k = b.option("kernel_size", st.integers(1, 3), BAD_SIZES)
    shape = (size(b.draw, SMALL), c_in if isinstance(c_in, int) and c_in > 0 else 2, size(b.draw))
    return Draw({"in_channels": c_in, "out_channels": c_out, "kernel_size": k,
                 "dilation": b.option("dilation", (1, 2, 3), BAD_INTS), "bias": b.option("bias", (True, False), BAD_BOOLS),
                 "x": b.tensor("x", shape, torch.float32)}, grads=("x",), terms=12, seed=b.seed)


@composite(("x", "residual_channels", "skip_channels", "kernel_size", "dilation", "residual_scale"))
def layer_draws(b):
    r = b.option("residual_channels", CHANNELS, BAD_SIZES)
    shape = (size(b.draw, SMALL), r if isinstance(r, int) and r > 0 else 2, size(b.draw))
    return Draw({"residual_channels": r, "skip_channels": b.option("skip_channels", CHANNELS, BAD_SIZES),
                 "kernel_size": b.option("kernel_size", (2,), BAD_SIZES),
                 "dilation": b.option("dilation", (1, 2, 4), BAD_INTS),
                 "residual_scale": b.option("residual_scale", (1.0, 0.5), BAD_FLOATS[:3]),
                 "x": b.tensor("x", shape, torch.float32)}, grads=("x",), terms=12, seed=b.seed)


def flow_draws(cls_arguments):
    @composite(("x", *cls_arguments))
    def draws(b):
        c = b.option("num_channels", st.sampled_from((2, 4)), BAD_SIZES)
        args = {"num_channels": c}
        if "hidden_channels" in cls_arguments:
            args["hidden_channels"] = b.option("hidden_channels", (2, 3), BAD_SIZES)
        if "transform" in cls_arguments:
            args["transform"] = b.option("transform", ("glow", "realnvp", "additive"), BAD_CHOICES)
        if "layout" in cls_arguments:
            args["layout"] = b.option("layout", ("halves", "interleaved", "checkerboard"), BAD_CHOICES)
        if "lu" in cls_arguments:
            args["lu"] = b.option("lu", (True, False), BAD_BOOLS)
        args["x"] = image(b, "x", c if isinstance(c, int) and c > 0 else 2)
        return Draw(args, grads=("x",), terms=16, seed=b.seed)
    return draws


@composite(("x", "activation", "dim"))
def gated_draws(b):
    return Draw({"activation": b.option("activation", ("tanh", "identity"), BAD_CHOICES),
                 "dim": b.option("dim", (1,), (5, -6, 1.5, None)), "x": image(b, "x", 2 * size(b.draw, SMALL[:-1]))},
                grads=("x",), seed=b.seed)


@composite(("params", "x", "num_channels", "num_bins", "log_scale_min", "reduction"))
def loss_draws(b):
    c = b.option("num_channels", (1, 3), (2, 0, None))
    channels = c if c in (1, 3) else 3
    n, h, w = size(b.draw, SMALL), b.draw(st.integers(1, 5)), b.draw(st.integers(1, 5))
    return Draw({"num_channels": c, "num_bins": b.option("num_bins", (256, 5), BAD_INTS),
                 "log_scale_min": b.option("log_scale_min", (-7.0,), BAD_FLOATS[:3]),
                 "reduction": b.option("reduction", ("sum", "mean", "none"), BAD_CHOICES),
                 "params": b.tensor("params", (n, (10 if channels == 3 else 3) * 2, h, w), torch.float32),
                 "x": b.tensor("x", (n, channels, h, w), torch.float32, values="grid:256")},
                grads=("params",), seed=b.seed)


@composite(("x", "in_channels", "out_channels", "kernel_size", "mask_type", "color_groups", "bias", "gate"))
def masked_draws(b):
    c_in = b.option("in_channels", st.sampled_from((1, 3, 6)), BAD_SIZES)
    groups = b.option("color_groups", (1, 3) if c_in in (3, 6) else (1,), BAD_SIZES)
    return Draw({"in_channels": c_in, "out_channels": b.option("out_channels", (6, 12), BAD_SIZES),
                 "kernel_size": b.option("kernel_size", (3, 5), BAD_SIZES),
                 "mask_type": b.option("mask_type", ("A", "B"), BAD_CHOICES), "color_groups": groups,
                 "bias": b.option("bias", (True, False), BAD_BOOLS),
                 "gate": b.option("gate", (None, "tanh") if groups == 1 else (None,), BAD_CHOICES),
                 "x": image(b, "x", c_in if isinstance(c_in, int) and c_in > 0 else 3)},
                grads=("x",), terms=6 * 25, seed=b.seed)


@composite(("x", "in_channels", "out_channels", "kernel_size", "shift", "bias"))
def shifted_draws(b):
    c_in, shift = b.option("in_channels", CHANNELS, BAD_SIZES), b.draw(st.sampled_from(("down", "down_right")))
    kernel = (2, 3) if shift == "down" else (2, 2)
    return Draw({"in_channels": c_in, "out_channels": b.option("out_channels", CHANNELS, BAD_SIZES),
                 "kernel_size": b.option("kernel_size", (kernel,), ((0, 3), -1, "3", None, (2, 3, 4))),
                 "shift": b.option("shift", (shift,), BAD_CHOICES), "bias": b.option("bias", (True, False), BAD_BOOLS),
                 "x": image(b, "x", c_in if isinstance(c_in, int) and c_in > 0 else 2)},
                grads=("x",), terms=24, seed=b.seed)


def resample_draws(factor_name):
    @composite(("x", "taps", factor_name))
    def draws(b):
        args = {"taps": b.option("taps", ([1, 3, 3, 1], [1, 1], [1]), ([], "x", [[1, 2], [3]], [1, float("nan")])),
                factor_name: b.option(factor_name, (1, 2, 3), BAD_SIZES)}
        if factor_name == "factor":
            args["gain"] = b.option("gain", (1.0, 2.0), BAD_FLOATS[:3])
        args["x"] = image(b, "x", size(b.draw, SMALL[:-1]))
        return Draw(args, grads=("x",), terms=16, seed=b.seed)
    return draws


@composite(("x", "num_codes", "code_dim", "commitment", "ema", "decay", "dead_code_threshold"))
def quantizer_draws(b):
    d = b.option("code_dim", CHANNELS, BAD_SIZES)
    return Draw({"num_codes": b.option("num_codes", (1, 4, 9), BAD_SIZES), "code_dim": d,
                 "commitment": b.option("commitment", (0.25, 0.0), BAD_FLOATS[:4]),
                 "ema": b.option("ema", (True, False), BAD_BOOLS),
                 "decay": b.option("decay", (0.99, 0.5), (1.5, -0.1, *BAD_FLOATS[:3])),
                 "dead_code_threshold": b.option("dead_code_threshold", (0.1, 0.0), BAD_FLOATS[:4]),
                 "x": image(b, "x", d if isinstance(d, int) and 0 < d else 2)}, grads=("x",), terms=4,
                seed=b.seed)


def quantizer_near_ties(a, reference: Result):
    """nn.VectorQuantizer's near-ties (ops.vq_near_ties): quantized, indices and x's gradient at their
    positions may take either code (the loss moves by less than the tolerance)."""
    kwargs = {name: value for name, value in a.items() if name != "x"}
    torch.manual_seed(0)  # module_call's parameters
    module = gnn.VectorQuantizer(**kwargs)
    x = a["x"]
    dim = module.dim % x.dim()
    tied, _ = near_tie_codes(x, module.codebook.detach().to(x.dtype), dim)
    if not tied.any():
        return None
    quantized = reference.outputs[0]
    return Result((_along(tied, quantized, dim), tied, None), (_along(tied, x, dim),))


def fused_actnorm_bound(a) -> float:
    """nn.FlowStep's fused actnorm + 1x1 after ActNorm's initialisation from x: M = W e^s and c = M b rounded
    to float32 (u |M|, u |c|), then y = M x + c summed in float32 (C + 1 terms): its rounding error is at
    most (C + 3) u Σ|terms| <= (C + 3) u √C max_c e^{s_c} (max|x_c| + |b_c|) (W a rotation: rows of norm 1),
    with e^{s_c} = 1 / (std_c + eps), b = -mean, u = 2^-24. Where a channel's std is ~0 (one value per
    channel: N = 1 on a 1x1 image) e^s = 1e6 and the terms are ~1e6 times the value: the bound then
    passes the tables' atol."""
    x = a.get("x")
    if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.numel() == 0 or not x.is_floating_point() \
            or x.device.type == "meta":
        return 0.0
    x64 = x.detach().double().transpose(0, 1).reshape(x.shape[1], -1)
    mean = x64.mean(1)
    std = (x64 - mean[:, None]).square().mean(1).sqrt()
    channels = x.shape[1]
    largest = ((x64.abs().amax(1) + mean.abs()) / (std + 1e-6)).max().item()
    return (channels + 3) * 2.0 ** -24 * math.sqrt(channels) * largest


def _module(name, cls, strategy, arguments, inputs=("x",), op_names=(), known="", **kwargs):
    """``arguments``: the constructor's and forward's names (the forwards call their first one "input")."""
    return FuzzOp(name, strategy, module_call(cls, inputs), (name.removeprefix("nn."), *op_names),
                  (*arguments, "input"), tolerance_scale=4, known_nonfinite=known, **kwargs)


FLOW_OP_NAMES = ("actnorm", "conv1x1", "invertible_conv1x1", "affine_coupling", "coupling")
MODULES = [
    _module("nn.ActNorm", gnn.ActNorm, actnorm_draws, ("x", "num_channels", "eps"), op_names=FLOW_OP_NAMES),
    _module("nn.FusedLeakyReLU", gnn.FusedLeakyReLU, leaky_draws,
            ("x", "b", "channels", "negative_slope", "scale", "bias"), op_names=("bias_act",)),
    _module("nn.CausalConv1d", gnn.CausalConv1d, causal_draws,
            ("x", "weight", "in_channels", "out_channels", "kernel_size", "dilation", "bias"),
            op_names=("causal_conv1d",)),
    _module("nn.WaveNetLayer", gnn.WaveNetLayer, layer_draws,
            ("x", "residual_channels", "skip_channels", "kernel_size", "dilation", "residual_scale"),
            op_names=("wavenet_layer",)),
    _module("nn.AffineCoupling", gnn.AffineCoupling, flow_draws(("num_channels", "hidden_channels", "transform",
                                                                 "layout")),
            ("x", "h", "num_channels", "hidden_channels", "transform", "layout"), op_names=FLOW_OP_NAMES),
    _module("nn.FlowStep", gnn.FlowStep, flow_draws(("num_channels", "hidden_channels", "lu", "transform", "layout")),
            ("x", "h", "num_channels", "hidden_channels", "lu", "transform", "layout"),
            op_names=FLOW_OP_NAMES + ("AffineCoupling", "ActNorm", "InvConv2d"), rounding_bound=fused_actnorm_bound),
    _module("nn.InvConv2d", gnn.InvConv2d, flow_draws(("num_channels",)), ("x", "num_channels"),
            op_names=FLOW_OP_NAMES),
    _module("nn.InvConv2dLU", gnn.InvConv2dLU, flow_draws(("num_channels",)), ("x", "num_channels"),
            op_names=FLOW_OP_NAMES),
    _module("nn.Squeeze2d", lambda num_channels: gnn.Squeeze2d(), flow_draws(("num_channels",)), ("x",)),
    _module("nn.GatedActivation", gnn.GatedActivation, gated_draws, ("x", "activation", "dim"),
            op_names=("gated",)),
    _module("nn.DiscretizedLogisticMixtureLoss", gnn.DiscretizedLogisticMixtureLoss, loss_draws,
            ("params", "x", "num_channels", "num_bins", "log_scale_min", "reduction"), inputs=("params", "x"),
            op_names=("logistic_mixture",)),
    _module("nn.MaskedConv2d", gnn.MaskedConv2d, masked_draws,
            ("x", "in_channels", "out_channels", "kernel_size", "mask_type", "color_groups", "bias", "gate"),
            op_names=("masked_conv2d", "conv_mask"),
            nonfinite_upper=every_centre_pair(module_call(gnn.MaskedConv2d))),
    _module("nn.ShiftedConv2d", gnn.ShiftedConv2d, shifted_draws,
            ("x", "in_channels", "out_channels", "kernel_size", "shift", "bias"), op_names=("shifted_conv2d",)),
    _module("nn.Upsample2d", gnn.Upsample2d, resample_draws("factor"), ("x", "taps", "factor", "gain", "f"),
            op_names=("upsample2d", "upfirdn2d", "setup_filter")),
    _module("nn.Downsample2d", gnn.Downsample2d, resample_draws("factor"), ("x", "taps", "factor", "gain", "f"),
            op_names=("downsample2d", "upfirdn2d", "setup_filter")),
    _module("nn.VectorQuantizer", gnn.VectorQuantizer, quantizer_draws,
            ("x", "num_codes", "code_dim", "commitment", "ema", "decay", "dead_code_threshold", "codebook"),
            op_names=("vector_quantize", "vector_quantize_statistics"), near_ties=quantizer_near_ties),
    _module("nn.Blur", gnn.Blur, resample_draws("upsample_factor"), ("x", "taps", "upsample_factor", "padding", "f"),
            op_names=("filter2d", "upfirdn2d", "setup_filter")),
]
