"""Every public op as a FuzzOp: a strategy of drawn calls and the call of its public function.

Each strategy draws valid shapes (0, 1, odd and prime sizes), dtypes, layouts and options, and in half of
the draws one argument made bad (see strategies.Builder). ``terms`` is how many products each output sums
(the sum tolerance of tests/conftest.py grows with its square root; a convolution's gradients sum about as
many, so ``terms`` bounds both). The mixture's float64 gradients get 100x float64's 1e-12: at 65536 bins
the bin's probability is a difference of two CDFs that cancels ~4 digits.
"""
from __future__ import annotations

import math
from unittest import mock

import torch
import torch.nn.functional as F
from hypothesis import strategies as st

import gmkernels as gmk
from gmkernels.ops.cached_conv import cached_conv2d
from gmkernels.ops.wavenet_generate import wavenet_generate
from gmkernels.reference import masked_conv as reference_masked_conv
from gmkernels.reference.wavenet_generate import GenerationWeights

from .harness import Draw, FuzzOp, Result
from .strategies import BAD_FLOATS, BAD_INTS, SMALL, Builder, capped, size

BAD_CHOICES = ("nope", "", None, 1, True)
BAD_BOOLS = ("False", 0, 1, None, 1.0)
FINITE = st.sampled_from((1.0, 0.5, 0.0, -1.0, 2.0, 1e-3))


def composite(arguments: tuple[str, ...]):
    """A strategy from ``f(b: Builder) -> Draw``, the Builder making one of ``arguments`` bad."""
    def wrap(f):
        @st.composite
        def strategy(draw):
            return f(Builder(draw, arguments))
        return strategy()
    return wrap


def spatial(b: Builder, most: int = 2) -> tuple[int, ...]:
    return tuple(capped([size(b.draw) for _ in range(b.draw(st.integers(0, most)))], limit=256))


# --- gated ----------------------------------------------------------------------------------------------

@composite(("x", "cond", "activation", "dim"))
def gated_draws(b):
    dtype, rank = b.dtype(), b.draw(st.integers(2, 4))
    shape = [size(b.draw) for _ in range(rank)]
    dim = b.draw(st.integers(-rank, rank - 1))
    shape[dim] = 2 * size(b.draw, SMALL)
    shape = capped(shape, keep=(dim % rank,))
    cond_shape = [s if i in (0, dim % rank) or b.draw(st.booleans()) else 1 for i, s in enumerate(shape)]
    return Draw({"x": b.tensor("x", shape, dtype), "cond": b.optional("cond", cond_shape, dtype),
                 "activation": b.option("activation", ("tanh", "identity"), BAD_CHOICES),
                 "dim": b.option("dim", (dim,), (rank, -rank - 1, 1.5, None, True))},
                grads=("x", "cond"), seed=b.seed)


def gated_call(a, backend):
    return gmk.gated_activation(a["x"], a["cond"], activation=a["activation"], dim=a["dim"], backend=backend)


# --- logistic mixture -------------------------------------------------------------------------------------

def mixture_params(b: Builder, dtype):
    channels, k = b.draw(st.sampled_from((1, 3))), b.draw(st.integers(1, 3))
    n, s = size(b.draw, SMALL), spatial(b)
    return channels, n, s, b.tensor("params", (n, (10 if channels == 3 else 3) * k, *s), dtype)


@composite(("params", "x", "num_bins", "log_scale_min", "reduction"))
def nll_draws(b):
    dtype = b.dtype()
    channels, n, s, params = mixture_params(b, dtype)
    bins = b.option("num_bins", (2, 5, 256, 65536), BAD_INTS)
    # x's grid: the drawn num_bins when it is a valid count the grid can be drawn on (a bad 2**63 is not)
    grid = bins if isinstance(bins, int) and not isinstance(bins, bool) and 2 <= bins <= 65536 else 256
    x_dtype = b.draw(st.sampled_from((dtype, dtype, torch.float32)))
    return Draw({"params": params, "x": b.tensor("x", (n, channels, *s), x_dtype, values=f"grid:{grid}"),
                 "num_bins": bins, "log_scale_min": b.option("log_scale_min", (-7.0, -3.0, -20.0), BAD_FLOATS),
                 "reduction": b.option("reduction", ("none", "sum", "mean"), BAD_CHOICES)},
                grads=("params",), terms=1, seed=b.seed)


def nll_call(a, backend):
    return gmk.discretized_logistic_mixture_nll(a["params"], a["x"], num_bins=a["num_bins"],
                                                log_scale_min=a["log_scale_min"], reduction=a["reduction"],
                                                backend=backend)


@composite(("params", "num_channels", "num_bins", "log_scale_min"))
def sample_draws(b):
    channels, _, _, params = mixture_params(b, b.dtype())
    return Draw({"params": params, "num_channels": b.option("num_channels", (channels,), (2, 0, -1, "3", None)),
                 "num_bins": b.option("num_bins", (2, 5, 256), BAD_INTS),
                 "log_scale_min": b.option("log_scale_min", (-7.0, -2.0), BAD_FLOATS)}, seed=b.seed)


def sample_call(a, backend):
    return gmk.discretized_logistic_mixture_sample(a["params"], num_channels=a["num_channels"],
                                                   num_bins=a["num_bins"], log_scale_min=a["log_scale_min"],
                                                   generator=torch.Generator().manual_seed(0), backend=backend)


@composite(("nll_nats", "num_subpixels"))
def bits_draws(b):
    return Draw({"nll_nats": b.tensor("nll_nats", spatial(b, 3), b.dtype()),
                 "num_subpixels": b.option("num_subpixels", (1, 3, 3072), BAD_INTS)}, seed=b.seed)


# --- masked and shifted convolutions -----------------------------------------------------------------------

@composite(("x", "weight", "bias", "cond", "mask_type", "color_groups", "gate"))
def masked_draws(b):
    dtype, groups = b.dtype(), b.draw(st.sampled_from((1, 1, 3)))
    gate = b.option("gate", (None, None, "tanh", "identity") if groups == 1 else (None,), BAD_CHOICES)
    c_in, c_out = groups * size(b.draw, SMALL[:-1]), groups * 2 * size(b.draw, SMALL[:-1])
    k, n, h, w = b.draw(st.sampled_from((1, 3, 5))), size(b.draw, SMALL), size(b.draw), size(b.draw)
    mask_type = b.option("mask_type", ("A", "B") if k > 1 or groups > 1 else ("B",), BAD_CHOICES)
    has_cond = gate is not None and b.draw(st.booleans())
    return Draw({"x": b.tensor("x", (n, c_in, h, w), dtype), "weight": b.tensor("weight", (c_out, c_in, k, k), dtype),
                 "bias": b.optional("bias", (c_out,), dtype),
                 "cond": b.tensor("cond", (n, c_out, 1, 1), dtype) if has_cond else None,
                 "mask_type": mask_type, "color_groups": b.option("color_groups", (groups,), BAD_INTS), "gate": gate},
                grads=("x", "weight", "bias", "cond"), terms=max(c_in, c_out) * k * k, seed=b.seed)


def masked_call(a, backend):
    return gmk.masked_conv2d(a["x"], a["weight"], a["bias"], mask_type=a["mask_type"], color_groups=a["color_groups"],
                             gate=a["gate"], cond=a["cond"], backend=backend)


def _centre_every_pair(x, centre, mask_type, color_groups):
    """The centre tap over every channel pair, weight 0 where masked: as the kernels' block products read it."""
    live = reference_masked_conv.conv_mask(1, mask_type, centre.shape[1], centre.shape[0], color_groups)
    return F.conv2d(x, torch.where(live.to(centre.device, torch.bool), centre[:, :, None, None], 0))


def every_centre_pair(call):
    """``call`` with the reference reading, at the centre tap of a colour-grouped mask, the input channels an
    output's group does not see (times a zero weight): where the kernels may turn a NaN/inf there into NaN
    (their block products multiply whole channel blocks; the op's formula, the reference's, does not read
    them). docs/finite-ranges.md, "Comparison rules"."""
    def upper(a, backend):
        with mock.patch.object(reference_masked_conv, "centre_tap_conv2d", _centre_every_pair):
            return call(a, backend)
    return upper


@composite(("x", "weight", "bias", "shift"))
def shifted_draws(b):
    dtype, shift = b.dtype(), b.draw(st.sampled_from(("down", "down_right")))
    c_in, c_out, n, h, w = (size(b.draw, SMALL[:-1]), size(b.draw, SMALL[:-1]), size(b.draw, SMALL), size(b.draw),
                            size(b.draw))
    kh = b.draw(st.integers(1, 3))
    kw = b.draw(st.sampled_from((1, 3, 5) if shift == "down" else (1, 2, 3)))
    return Draw({"x": b.tensor("x", (n, c_in, h, w), dtype), "weight": b.tensor("weight", (c_out, c_in, kh, kw), dtype),
                 "bias": b.optional("bias", (c_out,), dtype), "shift": b.option("shift", (shift,), BAD_CHOICES)},
                grads=("x", "weight", "bias"), terms=max(c_in, c_out) * kh * kw, seed=b.seed)


def shifted_call(a, backend):
    return gmk.shifted_conv2d(a["x"], a["weight"], a["bias"], shift=a["shift"], backend=backend)


@composite(("rows", "weight", "bias", "column", "count", "stride"))
def cached_draws(b):
    dtype = b.dtype()
    c_in, c_out, n, rows, kh, kw = (size(b.draw, SMALL[:-1]), size(b.draw, SMALL[:-1]), size(b.draw, SMALL),
                                    b.draw(st.integers(1, 4)), 1, b.draw(st.integers(1, 4)))
    kh = b.draw(st.integers(1, rows))
    stride, count = b.draw(st.integers(1, 3)), b.draw(st.integers(1, 5))
    column = b.draw(st.integers(0, 3))
    width = column + (count - 1) * stride + kw + b.draw(st.integers(0, 3))
    return Draw({"rows": b.tensor("rows", (n, c_in, rows, width), dtype),
                 "weight": b.tensor("weight", (c_out, c_in, kh, kw), dtype), "bias": b.optional("bias", (c_out,), dtype),
                 "column": b.option("column", (column,)), "count": b.option("count", (count,)),
                 "stride": b.option("stride", (stride,))}, terms=c_in * kh * kw, seed=b.seed)


def cached_call(a, backend):
    return cached_conv2d(a["rows"], a["weight"], a["bias"], column=a["column"], count=a["count"], stride=a["stride"],
                         backend=backend)


# --- causal convolution, WaveNet layer and generation -------------------------------------------------------

@composite(("x", "weight", "bias", "dilation"))
def causal_draws(b):
    dtype = b.dtype()
    c_in, c_out, n, t, k = (size(b.draw, SMALL[:-1]), size(b.draw, SMALL[:-1]), size(b.draw, SMALL), size(b.draw),
                            b.draw(st.integers(1, 4)))
    return Draw({"x": b.tensor("x", (n, c_in, t), dtype), "weight": b.tensor("weight", (c_out, c_in, k), dtype),
                 "bias": b.optional("bias", (c_out,), dtype), "dilation": b.option("dilation", (1, 2, 3, 7, 64))},
                grads=("x", "weight", "bias"), terms=max(c_in, c_out) * k, seed=b.seed)


def causal_call(a, backend):
    return gmk.causal_conv1d(a["x"], a["weight"], a["bias"], dilation=a["dilation"], backend=backend)


LAYER_TENSORS = ("x", "conv_weight", "conv_bias", "res_weight", "res_bias", "skip_weight", "skip_bias", "cond")


@composite((*LAYER_TENSORS, "dilation", "residual_scale"))
def layer_draws(b):
    dtype = b.dtype()
    r, s, n, t = size(b.draw, SMALL[:-1]), size(b.draw, SMALL[:-1]), size(b.draw, SMALL), size(b.draw)
    cond_t = b.draw(st.sampled_from((1, t)))
    return Draw({"x": b.tensor("x", (n, r, t), dtype), "conv_weight": b.tensor("conv_weight", (2 * r, r, 2), dtype),
                 "conv_bias": b.optional("conv_bias", (2 * r,), dtype),
                 "res_weight": b.tensor("res_weight", (r, r), dtype), "res_bias": b.optional("res_bias", (r,), dtype),
                 "skip_weight": b.tensor("skip_weight", (s, r), dtype),
                 "skip_bias": b.optional("skip_bias", (s,), dtype),
                 "cond": b.optional("cond", (n, 2 * r, cond_t), dtype),
                 "dilation": b.option("dilation", (1, 2, 5)),
                 "residual_scale": b.option("residual_scale", (1.0, 0.5 ** 0.5, 0.0), BAD_FLOATS[:3] + BAD_FLOATS[6:])},
                grads=LAYER_TENSORS, terms=4 * r + s, seed=b.seed)


def layer_call(a, backend):
    return gmk.wavenet_layer(*(a[name] for name in LAYER_TENSORS), dilation=a["dilation"],
                             residual_scale=a["residual_scale"], backend=backend)


def triton_rounds_half_intermediates(a, backend: str) -> int:
    """Triton's wavenet_layer feeds the 1x1s' tl.dot the gated z in x's dtype, and its backward stores grad_h
    and z in x's dtype: for float16/bfloat16 x one more rounding than the CPU kernels (float32 throughout)."""
    x = a["x"]
    half = isinstance(x, torch.Tensor) and x.dtype in (torch.float16, torch.bfloat16)
    return 2 if backend == "triton" and half else 1


WEIGHTS = GenerationWeights._fields


@composite((*WEIGHTS, "uniform", "cond", "dilations", "start_class", "residual_scale", "temperature", "head",
            "log_scale_min"))
def generate_draws(b):
    dtype = b.dtype()
    head = b.draw(st.sampled_from(("softmax", "logistic_mixture")))
    a, layers, r, s, hidden = (b.draw(st.integers(2, 6)), b.draw(st.integers(1, 3)), size(b.draw, SMALL[:-1]),
                               size(b.draw, SMALL[:-1]), size(b.draw, SMALL[:-1]))
    outputs = a if head == "softmax" else 3 * b.draw(st.integers(1, 2))
    n, t = b.draw(st.integers(1, 3)), size(b.draw, SMALL)
    shapes = {"embedding": (a, r), "conv_weight": (layers, 2 * r, r, 2), "conv_bias": (layers, 2 * r),
              "res_weight": (layers, r, r), "res_bias": (layers, r), "skip_weight": (layers, s, r),
              "skip_bias": (layers, s), "head_weight1": (hidden, s), "head_bias1": (hidden,),
              "head_weight2": (outputs, hidden), "head_bias2": (outputs,)}
    noise = torch.float64 if dtype == torch.float64 else torch.float32
    args = {name: b.tensor(name, shape, dtype, scale=0.5) for name, shape in shapes.items()}
    args.update(uniform=b.tensor("uniform", (n, t, 1 if head == "softmax" else 2), noise, values="unit"),
                cond=b.optional("cond", (layers, n, 2 * r, b.draw(st.sampled_from((1, t)))), dtype),
                dilations=b.option("dilations", st.lists(st.integers(1, 4), min_size=layers, max_size=layers),
                                   ([0] * layers, [-1] * layers, [1] * (layers + 1), 2, None, [1.5] * layers)),
                start_class=b.option("start_class", st.integers(0, a - 1), (a, -1, 1.5, None, True)),
                residual_scale=b.option("residual_scale", (1.0, 0.5), BAD_FLOATS[:3]),
                temperature=b.option("temperature", (1.0, 0.5, 2.0), (0.0, -1.0, *BAD_FLOATS[:3])),
                head=head if b.bad != "head" else b.draw(st.sampled_from(BAD_CHOICES)),
                log_scale_min=b.option("log_scale_min", (-7.0,), BAD_FLOATS[:3]))
    return Draw(args, seed=b.seed)


def generate_call(a, backend):
    weights = GenerationWeights(*(a[name] for name in WEIGHTS))
    return wavenet_generate(weights, a["dilations"], a["uniform"], a["cond"], start_class=a["start_class"],
                            residual_scale=a["residual_scale"], temperature=a["temperature"], head=a["head"],
                            log_scale_min=a["log_scale_min"], backend=backend)


# --- flows ------------------------------------------------------------------------------------------------

def flow_x(b: Builder, dtype, channels):
    return b.tensor("x", (size(b.draw, SMALL), channels, *spatial(b)), dtype)


@composite(("x", "bias", "log_scale", "reverse"))
def actnorm_draws(b):
    dtype, c = b.dtype(), size(b.draw, SMALL)
    param = b.draw(st.sampled_from((dtype, torch.float32)))
    return Draw({"x": flow_x(b, dtype, c), "bias": b.tensor("bias", (c,), param),
                 "log_scale": b.tensor("log_scale", (c,), param, scale=0.5),
                 "reverse": b.option("reverse", (False, True), BAD_BOOLS)},
                grads=("x", "bias", "log_scale"), seed=b.seed)


def actnorm_call(a, backend):
    return gmk.actnorm(a["x"], a["bias"], a["log_scale"], reverse=a["reverse"], backend=backend)


LU = ("lower", "upper", "log_s", "sign_s", "perm")


def lu_args(b: Builder, c: int, dtype):
    return {"lower": b.tensor("lower", (c, c), dtype), "upper": b.tensor("upper", (c, c), dtype, scale=0.5),
            "log_s": b.tensor("log_s", (c,), dtype, scale=0.2), "sign_s": b.tensor("sign_s", (c,), dtype, values="sign"),
            "perm": b.tensor("perm", (c, c), dtype, values="permutation")}


def conv1x1_draws(actnorm: bool, lu: bool):
    parameters = (("bias", "log_scale") if actnorm else ()) + (LU if lu else ("weight",))

    @composite(("x", *parameters, "reverse"))
    def draws(b):
        dtype, c = b.dtype(), size(b.draw, (1, 2, 3, 4, 5))
        args = {"x": flow_x(b, dtype, c)}
        if actnorm:
            args.update(bias=b.tensor("bias", (c,), dtype), log_scale=b.tensor("log_scale", (c,), dtype, scale=0.3))
        if lu:
            args.update(lu_args(b, c, dtype))
        else:
            args["weight"] = b.tensor("weight", (c, c), dtype, values="near_identity", scale=0.3)
        args["reverse"] = b.option("reverse", (False, True), BAD_BOOLS)
        grads = ("x", "bias", "log_scale", "weight", "lower", "upper", "log_s")
        return Draw(args, grads=grads, terms=c, seed=b.seed)
    return draws


def conv1x1_call(function, parameters):
    def call(a, backend):
        return function(a["x"], *(a[name] for name in parameters), reverse=a["reverse"], backend=backend)
    return call


@composite(("x", "h", "transform", "layout", "reverse"))
def coupling_draws(b):
    from gmkernels.ops.coupling import h_channels
    dtype = b.dtype()
    transform = b.draw(st.sampled_from(("glow", "realnvp", "additive")))
    layout = b.draw(st.sampled_from(("halves", "interleaved", "checkerboard", "checkerboard_odd")))
    checkerboard = layout.startswith("checkerboard")
    c = size(b.draw, SMALL[:-1]) if checkerboard else 2 * size(b.draw, SMALL)
    s = tuple(capped([size(b.draw) for _ in range(b.draw(st.integers(1 if checkerboard else 0, 2)))], limit=256))
    n = size(b.draw, SMALL)
    return Draw({"x": b.tensor("x", (n, c, *s), dtype),
                 "h": b.tensor("h", (n, h_channels(c, transform, layout), *s), dtype, scale=0.5),
                 "transform": b.option("transform", (transform,), BAD_CHOICES),
                 "layout": b.option("layout", (layout,), BAD_CHOICES),
                 "reverse": b.option("reverse", (False, True), BAD_BOOLS)}, grads=("x", "h"), seed=b.seed)


def coupling_call(a, backend):
    return gmk.affine_coupling(a["x"], a["h"], transform=a["transform"], layout=a["layout"], reverse=a["reverse"],
                               backend=backend)


# --- GAN ops ----------------------------------------------------------------------------------------------

ACTS = ("linear", "relu", "lrelu", "tanh", "sigmoid", "elu", "selu", "softplus", "swish")


@composite(("x", "b", "dim", "act", "alpha", "gain", "clamp"))
def bias_act_draws(b):
    dtype, rank = b.dtype(), b.draw(st.integers(1, 4))
    shape = capped([size(b.draw) for _ in range(rank)])
    dim = b.draw(st.integers(-rank, rank - 1))
    return Draw({"x": b.tensor("x", shape, dtype), "b": b.optional("b", (shape[dim],), dtype),
                 "dim": b.option("dim", (dim,), (rank, -rank - 1, 1.5, None, True)),
                 "act": b.option("act", ACTS, BAD_CHOICES),
                 "alpha": b.option("alpha", (None, 0.2, 0.0, 1.0), BAD_FLOATS[:3] + BAD_FLOATS[7:]),
                 "gain": b.option("gain", (None, 1.0, 2.0, -1.0), BAD_FLOATS[:3] + BAD_FLOATS[7:]),
                 "clamp": b.option("clamp", (None, None, 0.5, 256.0, 0.0), BAD_FLOATS[:4] + BAD_FLOATS[7:])},
                grads=("x", "b"), seed=b.seed)


def bias_act_call(a, backend):
    return gmk.bias_act(a["x"], a["b"], dim=a["dim"], act=a["act"], alpha=a["alpha"], gain=a["gain"],
                        clamp=a["clamp"], backend=backend)


def bias_act_grad_bound(a, ideal: Result) -> tuple:
    """b's gradient sums the elementwise gradients g of x + b, each rounded to x's dtype first (the kernels, as
    torch's autograd of a broadcast add): 4σ of those roundings' sum, 4/√3 · u · ‖g_c‖₂ for the largest
    channel c of ``dim`` (u: x's unit roundoff; g: the ideal x gradient). Above the tables' atol where the
    terms are large and their sum cancels."""
    x, b = a["x"], a["b"]
    if not isinstance(b, torch.Tensor) or len(ideal.grads) < 2 or ideal.grads[0] is None \
            or not x.is_floating_point():
        return ()
    g = ideal.grads[0].double()
    others = [d for d in range(g.dim()) if d != a["dim"] % g.dim()]
    largest = g.square().sum(others).sqrt().max().item() if g.numel() else 0.0
    unit_roundoff = torch.finfo(x.dtype).eps / 2
    return None, 4 / math.sqrt(3) * unit_roundoff * largest


BAD_SCALINGS = (0, -1, (1, 0), (2,), 1.5, "2", None, (1, 2, 3))
BAD_PADDINGS = ((1, 2, 3), 1.5, "1", None, [0] * 5)
RESAMPLERS = {"upfirdn2d": gmk.upfirdn2d, "upsample2d": gmk.upsample2d, "downsample2d": gmk.downsample2d,
              "filter2d": gmk.filter2d}
SCALING = {"upfirdn2d": ("up", "down"), "upsample2d": ("up",), "downsample2d": ("down",), "filter2d": ()}


def resample_draws(function: str):
    scalings = SCALING[function]

    @composite(("x", "f", *scalings, "padding", "flip_filter", "gain"))
    def draws(b):
        dtype, n, c, h, w = b.dtype(), size(b.draw, SMALL), size(b.draw, SMALL), size(b.draw), size(b.draw)
        kind = b.draw(st.sampled_from(("none", "1d", "2d")))
        taps = b.draw(st.integers(1, 5))
        f = None if kind == "none" and b.bad != "f" else \
            b.tensor("f", (taps,) if kind == "1d" else (taps, b.draw(st.integers(1, 5))), torch.float32,
                     values="unit")
        scale = st.one_of(st.integers(1, 3), st.tuples(st.integers(1, 3), st.integers(1, 3)))
        pad = st.one_of(st.integers(-2, 3), st.tuples(st.integers(-2, 3), st.integers(-2, 3)),
                        st.tuples(*[st.integers(-2, 3)] * 4))
        args = {"x": b.tensor("x", (n, c, h, w), dtype), "f": f,
                "padding": b.option("padding", pad, BAD_PADDINGS),
                "flip_filter": b.option("flip_filter", (False, True), BAD_BOOLS),
                "gain": b.option("gain", (1.0, 0.5, 4.0), BAD_FLOATS[:3] + BAD_FLOATS[7:])}
        for name in scalings:
            args[name] = b.option(name, scale, BAD_SCALINGS)
        taps_2d = taps * (taps if kind == "1d" else 1)
        return Draw(args, grads=("x",), terms=taps_2d, seed=b.seed)
    return draws


def separable(a) -> bool:
    """A 1-D f: two passes, the first one's output rounded to x's dtype (the reference's two F.conv2d too)."""
    return isinstance(a.get("f"), torch.Tensor) and a["f"].dim() == 1


def resample_call(function: str):
    def call(a, backend):
        kwargs = {name: a[name] for name in (*SCALING[function], "padding", "flip_filter", "gain")}
        return RESAMPLERS[function](a["x"], a["f"], **kwargs, backend=backend)
    return call


# --- vector quantisation ------------------------------------------------------------------------------------

def vq_x(b: Builder, dtype, d):
    rank = b.draw(st.integers(1, 4))
    dim = b.draw(st.integers(-rank, rank - 1))
    shape = [size(b.draw, SMALL) for _ in range(rank)]
    shape[dim] = d
    return capped(shape, keep=(dim % rank,), limit=1024), dim


@composite(("x", "codebook", "dim", "return_distance"))
def vq_draws(b):
    dtype, d, k = b.dtype(), size(b.draw, SMALL[:-1]), b.draw(st.sampled_from((1, 2, 5, 17, 64)))
    shape, dim = vq_x(b, dtype, d)
    return Draw({"x": b.tensor("x", shape, dtype), "codebook": b.tensor("codebook", (k, d), dtype),
                 "dim": b.option("dim", (dim,), (len(shape), -len(shape) - 1, 1.5, None, True)),
                 "return_distance": b.option("return_distance", (False, True), BAD_BOOLS)},
                grads=("x", "codebook"), terms=d, seed=b.seed)


def vq_call(a, backend):
    return gmk.vector_quantize(a["x"], a["codebook"], dim=a["dim"], return_distance=a["return_distance"],
                               backend=backend)


def near_tie_codes(x: torch.Tensor, codebook: torch.Tensor, dim: int):
    """(positions, codes): the positions of x (its shape without ``dim``) whose two best scores
    ||c_k||² - 2 x·c_k differ by less than the scores' rounding error bound, 2 (D + 2) u (||x||² + max ||c||²)
    with u the unit roundoff of the scores' dtype (float32, float64 for float64 x: docs/conventions.md,
    "Vector quantisation"), or whose scores a non-finite value makes undefined, and a (K,) bool of the codes
    taking part in such a choice."""
    rows = x.detach().movedim(dim, -1).double()
    codes = codebook.detach().double()
    shape, k = rows.shape[:-1], codes.shape[0]
    if k < 2 or rows.numel() == 0:
        return torch.zeros(shape, dtype=torch.bool), torch.zeros(k, dtype=torch.bool)
    norms = (codes * codes).sum(1)
    best = (norms - 2 * rows @ codes.T).topk(2, dim=-1, largest=False)
    u = 2.0 ** (-53 if x.dtype == torch.float64 else -24)
    bound = 2 * (rows.shape[-1] + 2) * u * ((rows * rows).sum(-1) + norms.max())
    tied = (best.values[..., 1] - best.values[..., 0]) <= bound
    involved = torch.zeros(k, dtype=torch.bool)
    involved[best.indices[tied].reshape(-1)] = True
    # A non-finite x or code: scores of inf - inf, NaN in one summation order and ±inf in another, so the
    # nearest code is not defined by the formula: those positions (all of them for a non-finite code).
    undefined = ~rows.isfinite().all(-1) | ~codes.isfinite().all()
    if undefined.any():
        tied, involved = tied | undefined, involved | ~codes.isfinite().all(-1) | undefined.any()
    return tied, involved


def _along(tied: torch.Tensor, like: torch.Tensor, dim: int) -> torch.Tensor:
    """``tied`` (positions) spread along ``dim`` to ``like``'s shape."""
    return tied.unsqueeze(dim).expand(like.shape)


def vq_near_ties(a, reference: Result):
    """Where a near-tie may take either code: quantized, indices, distance and x's gradient at its positions,
    the codebook gradient's rows of the codes in it."""
    x, codebook = a["x"], a["codebook"]
    dim = a["dim"] % x.dim()
    tied, involved = near_tie_codes(x, codebook, dim)
    if not tied.any():
        return None
    quantized, indices, *distance = reference.outputs
    outputs = (_along(tied, quantized, dim), tied, *(tied for _ in distance))
    return Result(outputs, (_along(tied, x, dim), involved[:, None].expand(codebook.shape)))


@composite(("x", "indices", "num_codes", "dim"))
def vq_statistics_draws(b):
    dtype, d, k = b.dtype(), size(b.draw, SMALL[:-1]), b.draw(st.sampled_from((1, 2, 5, 17)))
    shape, dim = vq_x(b, dtype, d)
    positions = [s for i, s in enumerate(shape) if i != dim % len(shape)]
    return Draw({"x": b.tensor("x", shape, dtype), "indices": b.tensor("indices", positions, torch.int64,
                                                                       values=f"classes:{k}"),
                 "num_codes": b.option("num_codes", (k,), BAD_INTS),
                 "dim": b.option("dim", (dim,), (len(shape), -len(shape) - 1, 1.5, None, True))},
                terms=max(1, math.prod(positions)), seed=b.seed)


def vq_statistics_call(a, backend):
    return gmk.vector_quantize_statistics(a["x"], a["indices"], a["num_codes"], dim=a["dim"], backend=backend)


# --- plain functions (no backend) -----------------------------------------------------------------------------

@composite(("audio", "num_classes"))
def mu_encode_draws(b):
    return Draw({"audio": b.tensor("audio", spatial(b, 3), b.dtype(), values="unit"),
                 "num_classes": b.option("num_classes", (2, 256, 65536), BAD_INTS)}, seed=b.seed)


@composite(("classes", "num_classes"))
def mu_decode_draws(b):
    classes = b.option("num_classes", (2, 256), BAD_INTS)
    high = classes if isinstance(classes, int) and not isinstance(classes, bool) and classes > 0 else 2
    return Draw({"classes": b.tensor("classes", spatial(b, 3), torch.int64, values=f"classes:{min(high, 2**16)}"),
                 "num_classes": classes}, seed=b.seed)


@composite(("kernel_size", "mask_type", "in_channels", "out_channels", "color_groups"))
def conv_mask_draws(b):
    groups = b.option("color_groups", (1, 3), BAD_INTS)
    g = groups if groups in (1, 3) and not isinstance(groups, bool) else 1
    return Draw({"kernel_size": b.option("kernel_size", (1, 3, 5, 7), BAD_INTS),
                 "mask_type": b.option("mask_type", ("A", "B"), BAD_CHOICES),
                 "in_channels": b.option("in_channels", st.integers(1, 4).map(lambda v: v * g), BAD_INTS),
                 "out_channels": b.option("out_channels", st.integers(1, 4).map(lambda v: v * g), BAD_INTS),
                 "color_groups": groups}, seed=b.seed)


@composite(("f", "normalize", "flip_filter", "gain", "separable"))
def setup_filter_draws(b):
    rank = b.draw(st.integers(1, 2))
    return Draw({"f": b.tensor("f", [b.draw(st.integers(1, 6)) for _ in range(rank)], torch.float32, values="unit"),
                 "normalize": b.option("normalize", (True, False), BAD_BOOLS),
                 "flip_filter": b.option("flip_filter", (False, True), BAD_BOOLS),
                 "gain": b.option("gain", (1.0, 4.0), BAD_FLOATS[:3]),
                 "separable": b.option("separable", (None, True, False), ("yes", 1))}, seed=b.seed)


def _plain(function, *names, **keywords):
    def call(a, backend):
        return function(*(a[name] for name in names), **{k: a[v] for k, v in keywords.items()})
    return call


# --- the table ----------------------------------------------------------------------------------------------

def _op(name, strategy, call, names, arguments, **kwargs):
    return FuzzOp(name, strategy, call, names, arguments, **kwargs)


CONV1X1 = {
    "invertible_conv1x1": (gmk.invertible_conv1x1, False, False, ("weight",)),
    "invertible_conv1x1_lu": (gmk.invertible_conv1x1_lu, False, True, LU),
    "actnorm_conv1x1": (gmk.actnorm_conv1x1, True, False, ("bias", "log_scale", "weight")),
    "actnorm_conv1x1_lu": (gmk.actnorm_conv1x1_lu, True, True, ("bias", "log_scale", *LU)),
}


OPS = [
    _op("gated_activation", gated_draws, gated_call, ("gated",), ("x", "cond", "activation", "dim")),
    _op("discretized_logistic_mixture_nll", nll_draws, nll_call, ("logistic_mixture",),
        ("params", "x", "num_bins", "log_scale_min", "reduction", "grad_nll"), float64_scale=100),
    _op("discretized_logistic_mixture_sample", sample_draws, sample_call, ("logistic_mixture",),
        ("params", "num_channels", "num_bins", "log_scale_min", "generator", "gumbel_u", "logistic_u"),
        exact_only=True),
    _op("bits_per_dim", bits_draws, _plain(gmk.bits_per_dim, "nll_nats", "num_subpixels"), ("bits_per_dim",),
        ("nll_nats", "num_subpixels"), backends=False),
    _op("masked_conv2d", masked_draws, masked_call, ("masked_conv2d",),
        ("x", "weight", "bias", "cond", "mask_type", "color_groups", "gate", "grad_out"),
        nonfinite_upper=every_centre_pair(masked_call)),
    _op("shifted_conv2d", shifted_draws, shifted_call, ("shifted_conv2d",), ("x", "weight", "bias", "shift", "grad_out")),
    _op("cached_conv2d", cached_draws, cached_call, ("cached_conv2d",),
        ("rows", "weight", "bias", "column", "count", "stride")),
    _op("causal_conv1d", causal_draws, causal_call, ("causal_conv1d",), ("x", "weight", "bias", "dilation", "grad_out")),
    _op("wavenet_layer", layer_draws, layer_call, ("wavenet_layer",),
        (*LAYER_TENSORS, "dilation", "residual_scale", "grad_x_next", "grad_skip"),
        backend_roundings=triton_rounds_half_intermediates),
    _op("wavenet_generate", generate_draws, generate_call, ("wavenet_generate",),
        (*WEIGHTS, "uniform", "cond", "dilations", "start_class", "residual_scale", "temperature", "head",
         "log_scale_min", "weights"), exact_only=True),
    _op("actnorm", actnorm_draws, actnorm_call, ("actnorm",), ("x", "bias", "log_scale", "reverse", "grad_out")),
    *(_op(name, conv1x1_draws(actnorm, lu), conv1x1_call(function, parameters), (name, "conv1x1"),
          ("x", *parameters, "reverse", "matrix", "shift", "grad_y"))
      for name, (function, actnorm, lu, parameters) in CONV1X1.items()),
    _op("affine_coupling", coupling_draws, coupling_call, ("affine_coupling", "coupling"),
        ("x", "h", "transform", "layout", "reverse", "grad_y", "grad_logdet")),
    _op("bias_act", bias_act_draws, bias_act_call, ("bias_act",), ("x", "b", "dim", "act", "alpha", "gain", "clamp"),
        grad_rounding_bound=bias_act_grad_bound),
    *(_op(name, resample_draws(name), resample_call(name), (name, "upfirdn2d"),
          ("x", "f", "up", "down", "padding", "flip_filter", "gain"), rounds_to_own_dtype=separable)
      for name in RESAMPLERS),
    _op("vector_quantize", vq_draws, vq_call, ("vector_quantize",), ("x", "codebook", "dim", "return_distance"),
        near_ties=vq_near_ties),
    _op("vector_quantize_statistics", vq_statistics_draws, vq_statistics_call, ("vector_quantize_statistics",),
        ("x", "indices", "num_codes", "dim", "check_inputs")),
    _op("mu_law_encode", mu_encode_draws, _plain(gmk.mu_law_encode, "audio", "num_classes"), ("mu_law",),
        ("audio", "num_classes"), backends=False),
    _op("mu_law_decode", mu_decode_draws, _plain(gmk.mu_law_decode, "classes", "num_classes"), ("mu_law",),
        ("classes", "num_classes"), backends=False),
    _op("conv_mask", conv_mask_draws, _plain(gmk.conv_mask, "kernel_size", "mask_type", "in_channels",
                                             "out_channels", "color_groups"), ("conv_mask",),
        ("kernel_size", "mask_type", "in_channels", "out_channels", "color_groups"), backends=False),
    _op("setup_filter", setup_filter_draws, _plain(gmk.setup_filter, "f", normalize="normalize",
                                                   flip_filter="flip_filter", gain="gain", separable="separable"),
        ("setup_filter",), ("f", "normalize", "flip_filter", "gain", "separable"), backends=False),
]
OPS_BY_NAME = {op.name: op for op in OPS}
