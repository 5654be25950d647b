"""Issue 18's two generic families, over every public op and every backend that runs here:

(a) no op writes into its inputs: every tensor input (weights and biases included) equals its clone
    exactly after the forward and after the backward, at N = 1 with T = 1 / 1x1 spatial and at odd
    sizes; no output shares storage with an input;
(b) every tensor argument may be a view: passed strided (a gap after every element, the gaps NaN), expanded
    (stride 0 along a dimension) or transposed (reversed strides), it gives the output and the gradients
    of the same values passed contiguous.

OPS holds one entry per op and variant: the tensor inputs it builds for a size and a dtype, and its call.
"""
from __future__ import annotations

import functools
import zlib
from dataclasses import dataclass, field, replace
from typing import Any, Callable, NamedTuple

import pytest
import torch

import gmkernels as gmk
from conftest import assert_close, backends_under_test, noncontiguous, supported_dtypes
from gmkernels.ops.wavenet_generate import wavenet_generate
from gmkernels.reference.wavenet_generate import GenerationWeights

BACKENDS = ["reference", *backends_under_test("cpu")]


class Size(NamedTuple):
    n: int
    t: int                 # length of the 1-D (audio) ops
    hw: tuple[int, int]    # spatial size of the image and flow ops


SIZES = {"n1_t1": Size(1, 1, (1, 1)), "odd": Size(2, 3, (3, 5))}


@dataclass(frozen=True)
class Op:
    name: str
    make: Callable[[Size, torch.dtype], dict[str, torch.Tensor]]  # the tensor arguments, by name
    fn: Callable[..., Any]  # fn(**tensors, **options, backend=...) -> a tensor or a tuple of them
    options: dict = field(default_factory=dict)
    grads: tuple[str, ...] = ()  # the arguments the op is differentiable in
    structured: tuple[str, ...] = ()  # arguments whose values must keep their structure: never expanded
    has_backends: bool = True  # False: a plain torch function, run once (backend None)

    def __call__(self, backend: str | None, tensors: dict[str, torch.Tensor]):
        return self.fn(**tensors, **self.options, **({} if backend is None else {"backend": backend}))


def randn(dtype, *shape, scale=1.0):
    return scale * torch.randn(shape, dtype=dtype)


def on_grid(dtype, *shape, num_bins=256):
    """Sub-pixels on the grid of ``num_bins`` levels in [-1, 1]."""
    return (torch.randint(0, num_bins, shape) * (2 / (num_bins - 1)) - 1).to(dtype)


# --- the ops' inputs: (Size, dtype) -> {name: tensor} ------------------------------------------------------

def gated_inputs(s, d):
    return {"x": randn(d, s.n, 4, *s.hw), "cond": randn(d, s.n, 4, 1, 1)}


def channels_last_inputs(s, d):
    return {"x": randn(d, s.n, *s.hw, 4)}


def rgb_mixture_inputs(s, d, k=2):
    return {"params": randn(d, s.n, 10 * k, *s.hw), "x": on_grid(d, s.n, 3, *s.hw)}


def audio_mixture_inputs(s, d, k=2):
    return {"params": randn(d, s.n, 3 * k, s.t), "x": on_grid(d, s.n, 1, s.t)}


def params_only(make):
    return lambda s, d: {"params": make(s, d)["params"]}


def nll_inputs(s, d):
    return {"nll_nats": randn(d, s.n, *s.hw).abs()}


def conv2d_inputs(c_out, kernel, cond=False):
    def make(s, d):
        tensors = {"x": randn(d, s.n, 3, *s.hw), "weight": randn(d, c_out, 3, *kernel),
                   "bias": randn(d, c_out)}
        return {**tensors, "cond": randn(d, s.n, c_out, 1, 1)} if cond else tensors
    return make


def conv1d_inputs(s, d):
    return {"x": randn(d, s.n, 3, s.t), "weight": randn(d, 4, 3, 2), "bias": randn(d, 4)}


def layer_inputs(local_cond: bool, r=2, skip=3):
    def make(s, d):
        return {"x": randn(d, s.n, r, s.t), "cond": randn(d, s.n, 2 * r, s.t if local_cond else 1),
                "conv_weight": randn(d, 2 * r, r, 2), "conv_bias": randn(d, 2 * r),
                "res_weight": randn(d, r, r), "res_bias": randn(d, r),
                "skip_weight": randn(d, skip, r), "skip_bias": randn(d, skip)}
    return make


def generate_inputs(head, a=4, layers=2, r=2, skip=3, hidden=3, k=2):
    """A classes, L layers of kernel size 2, R, S, H; the softmax head or a mixture of K."""
    outputs, uniforms = (a, 1) if head == "softmax" else (3 * k, 2)
    shapes = {"embedding": (a, r), "conv_weight": (layers, 2 * r, r, 2), "conv_bias": (layers, 2 * r),
              "res_weight": (layers, r, r), "res_bias": (layers, r), "skip_weight": (layers, skip, r),
              "skip_bias": (layers, skip), "head_weight1": (hidden, skip), "head_bias1": (hidden,),
              "head_weight2": (outputs, hidden), "head_bias2": (outputs,)}

    def make(s, d):
        noise_dtype = torch.float64 if d == torch.float64 else torch.float32
        return {**{name: randn(d, *shape, scale=0.5) for name, shape in shapes.items()},
                "uniform": torch.rand(s.n, s.t, uniforms, dtype=noise_dtype),
                "cond": randn(d, layers, s.n, 2 * r, 1)}
    return make


FLOW_CHANNELS = 4


def well_conditioned(d, c=FLOW_CHANNELS):
    q = torch.linalg.qr(torch.randn(c, c, dtype=torch.float64))[0]
    return (q + 0.1 * torch.randn(c, c, dtype=torch.float64)).to(d)


def lu_parameters(d, c=FLOW_CHANNELS):
    return {"lower": randn(d, c, c), "upper": randn(d, c, c, scale=0.5), "log_s": randn(d, c, scale=0.2),
            "sign_s": randn(d, c).sign(), "perm": torch.eye(c, dtype=d)[torch.randperm(c)]}


def actnorm_parameters(d, c=FLOW_CHANNELS):
    return {"bias": randn(d, c), "log_scale": randn(d, c, scale=0.3)}


def flow_inputs(*parameters):
    """x (N, C, H, W) and the parameters each function in ``parameters`` makes."""
    def make(s, d):
        tensors = {"x": randn(d, s.n, FLOW_CHANNELS, *s.hw)}
        for make_parameters in parameters:
            made = make_parameters(d)
            tensors.update(made if isinstance(made, dict) else {"weight": made})
        return tensors
    return make


def coupling_inputs(transform):
    h_channels = FLOW_CHANNELS // 2 if transform == "additive" else FLOW_CHANNELS
    return lambda s, d: {"x": randn(d, s.n, FLOW_CHANNELS, *s.hw),
                         "h": randn(d, s.n, h_channels, *s.hw, scale=0.5)}


def checkerboard_inputs(transform):
    """x (N, C, H, W) with an odd C, h with 2C channels (C for additive): the checkerboard layouts."""
    h_channels = FLOW_CHANNELS - 1 if transform == "additive" else 2 * (FLOW_CHANNELS - 1)
    return lambda s, d: {"x": randn(d, s.n, FLOW_CHANNELS - 1, *s.hw),
                         "h": randn(d, s.n, h_channels, *s.hw, scale=0.5)}


def cached_conv_inputs(s, d):
    """A cache of 2 rows of a 3-channel map, its padding columns, and a 2 x 3 kernel."""
    return {"rows": randn(d, s.n, 3, 2, s.hw[1] + 3), "weight": randn(d, 4, 3, 2, 3), "bias": randn(d, 4)}


def audio_inputs(s, d):
    return {"audio": torch.rand(s.n, s.t, dtype=d) * 2 - 1}


def classes_inputs(s, d):
    return {"classes": torch.randint(0, 256, (s.n, s.t))}


# --- the ops -----------------------------------------------------------------------------------------------

def mixture_sample(params, *, num_channels, backend):
    """A sample from a fresh generator: every call draws the same noise."""
    return gmk.discretized_logistic_mixture_sample(params, num_channels=num_channels, backend=backend,
                                                   generator=torch.Generator().manual_seed(0))


def generate(uniform, cond, *, head, backend, **weights):
    return wavenet_generate(GenerationWeights(**weights), [1, 2], uniform, cond, start_class=1, head=head,
                            backend=backend)


CONV_GRADS = ("x", "weight", "bias")
LAYER_GRADS = ("x", "conv_weight", "conv_bias", "res_weight", "res_bias", "skip_weight", "skip_bias", "cond")
LU_GRADS = ("lower", "upper", "log_s")

FLOW_OPS = [
    Op("actnorm", flow_inputs(actnorm_parameters), gmk.actnorm, grads=("x", "bias", "log_scale")),
    Op("invertible_conv1x1", flow_inputs(well_conditioned), gmk.invertible_conv1x1, grads=("x", "weight"),
       structured=("weight",)),
    Op("invertible_conv1x1_lu", flow_inputs(lu_parameters), gmk.invertible_conv1x1_lu,
       grads=("x", *LU_GRADS), structured=("perm",)),
    Op("actnorm_conv1x1", flow_inputs(actnorm_parameters, well_conditioned), gmk.actnorm_conv1x1,
       grads=("x", "bias", "log_scale", "weight"), structured=("weight",)),
    Op("actnorm_conv1x1_lu", flow_inputs(actnorm_parameters, lu_parameters), gmk.actnorm_conv1x1_lu,
       grads=("x", "bias", "log_scale", *LU_GRADS), structured=("perm",)),
    *(Op(f"affine_coupling_{transform}_{layout}", coupling_inputs(transform), gmk.affine_coupling,
         {"transform": transform, "layout": layout}, grads=("x", "h"))
      for transform in ("glow", "realnvp", "additive") for layout in ("halves", "interleaved")),
    *(Op(f"affine_coupling_{transform}_{layout}", checkerboard_inputs(transform), gmk.affine_coupling,
         {"transform": transform, "layout": layout}, grads=("x", "h"))
      for transform in ("glow", "realnvp", "additive") for layout in ("checkerboard", "checkerboard_odd")),
]

def vector_quantize_inputs(size: Size, dtype):
    return {"x": randn(dtype, size.n, 3, *size.hw), "codebook": randn(dtype, 5, 3)}


def vector_quantize_statistics_inputs(size: Size, dtype):
    return {"x": randn(dtype, size.n, 3, *size.hw), "indices": torch.randint(0, 5, (size.n, *size.hw))}


def bias_act_inputs(size: Size, dtype):
    return {"x": randn(dtype, size.n, 4, *size.hw), "b": randn(dtype, 4)}


def upfirdn2d_inputs(size: Size, dtype):
    """Images and a 3 x 4 filter (not differentiated: the op gives it no gradient)."""
    return {"x": randn(dtype, size.n, 2, *size.hw), "f": randn(dtype, 3, 4)}


OPS = [
    Op("gated_activation_cond", gated_inputs, gmk.gated_activation, grads=("x", "cond")),
    Op("gated_activation_identity_dim_last", channels_last_inputs, gmk.gated_activation,
       {"activation": "identity", "dim": -1}, grads=("x",)),
    Op("mixture_nll_rgb", rgb_mixture_inputs, gmk.discretized_logistic_mixture_nll, grads=("params",)),
    Op("mixture_nll_audio", audio_mixture_inputs, gmk.discretized_logistic_mixture_nll, grads=("params",)),
    Op("mixture_sample_rgb", params_only(rgb_mixture_inputs), mixture_sample, {"num_channels": 3}),
    Op("mixture_sample_audio", params_only(audio_mixture_inputs), mixture_sample, {"num_channels": 1}),
    Op("bits_per_dim", nll_inputs, gmk.bits_per_dim, {"num_subpixels": 3}, grads=("nll_nats",),
       has_backends=False),
    Op("masked_conv2d_A_rgb", conv2d_inputs(6, (3, 3)), gmk.masked_conv2d,
       {"mask_type": "A", "color_groups": 3}, grads=CONV_GRADS),
    Op("masked_conv2d_B_gate_cond", conv2d_inputs(4, (3, 3), cond=True), gmk.masked_conv2d,
       {"mask_type": "B", "gate": "tanh"}, grads=(*CONV_GRADS, "cond")),
    Op("shifted_conv2d_down", conv2d_inputs(4, (2, 3)), gmk.shifted_conv2d, {"shift": "down"},
       grads=CONV_GRADS),
    Op("shifted_conv2d_down_right", conv2d_inputs(4, (2, 2)), gmk.shifted_conv2d, {"shift": "down_right"},
       grads=CONV_GRADS),
    Op("cached_conv2d_row", cached_conv_inputs, gmk.cached_conv2d, {"column": 0, "count": 2, "stride": 1},
       grads=("rows", "weight", "bias")),
    Op("causal_conv1d", conv1d_inputs, gmk.causal_conv1d, {"dilation": 2}, grads=CONV_GRADS),
    *(Op(f"wavenet_layer_{kind}_cond", layer_inputs(kind == "local"), gmk.wavenet_layer,
         {"dilation": 2, "residual_scale": 0.5 ** 0.5}, grads=LAYER_GRADS) for kind in ("global", "local")),
    *(Op(f"wavenet_generate_{head}", generate_inputs(head), generate, {"head": head})
      for head in ("softmax", "logistic_mixture")),
    *FLOW_OPS,
    *(replace(op, name=f"{op.name}_reverse", options={**op.options, "reverse": True}) for op in FLOW_OPS),
    Op("vector_quantize", vector_quantize_inputs, gmk.vector_quantize, {"return_distance": True},
       grads=("x", "codebook")),
    Op("vector_quantize_statistics", vector_quantize_statistics_inputs, gmk.vector_quantize_statistics,
       {"num_codes": 5}, grads=("x",)),
    Op("bias_act_lrelu_clamp", bias_act_inputs, gmk.bias_act, {"act": "lrelu", "clamp": 0.8}, grads=("x", "b")),
    Op("bias_act_swish", bias_act_inputs, gmk.bias_act, {"act": "swish", "gain": 1.3}, grads=("x", "b")),
    Op("upfirdn2d_up2", upfirdn2d_inputs, gmk.upfirdn2d, {"up": 2, "padding": (2, 1, 2, 1)}, grads=("x",)),
    Op("upfirdn2d_down2", upfirdn2d_inputs, gmk.upfirdn2d, {"down": 2, "padding": (2, 2, 1, 1), "gain": 2.0},
       grads=("x",)),
    Op("mu_law_encode", audio_inputs, gmk.mu_law_encode, has_backends=False),
    Op("mu_law_decode", classes_inputs, gmk.mu_law_decode, has_backends=False),
]
OPS_BY_NAME = {op.name: op for op in OPS}


def backends_of(op: Op) -> list[str | None]:
    return BACKENDS if op.has_backends else [None]


# --- running an op -----------------------------------------------------------------------------------------

def as_tuple(outputs) -> tuple[torch.Tensor, ...]:
    return outputs if isinstance(outputs, tuple) else (outputs,)


def run(op: Op, backend: str | None, tensors: dict[str, torch.Tensor], cotangents=None):
    """(outputs, cotangents, gradients of op.grads): the gradients of Σ outputs · cotangents; the
    cotangents random (drawn here) unless given."""
    leaves = {name: t.detach().requires_grad_(name in op.grads) for name, t in tensors.items()}
    outputs = as_tuple(op(backend, leaves))
    differentiable = [out for out in outputs if out.requires_grad]
    if cotangents is None:
        cotangents = [torch.randn_like(out) for out in differentiable]
    grads = ()
    if op.grads:
        grads = torch.autograd.grad(differentiable, [leaves[name] for name in op.grads], cotangents)
    return tuple(out.detach() for out in outputs), cotangents, grads


def assert_unchanged(tensors: dict[str, torch.Tensor], saved: dict[str, torch.Tensor], when: str) -> None:
    for name, t in tensors.items():
        torch.testing.assert_close(
            t.detach(), saved[name], rtol=0, atol=0, equal_nan=True,
            msg=lambda message, name=name: f"{name} was written by the {when}: {message}")


def assert_same_result(actual, expected, what: str) -> None:
    for i, (a, e) in enumerate(zip(actual, expected, strict=True)):
        if a.is_floating_point():
            kind = "forward" if what == "outputs" else "grad"
            try:
                assert_close(a, e, torch.float32, kind)
            except AssertionError as error:
                raise AssertionError(f"{what}[{i}] differs from the contiguous call's: {error}") from None
        else:
            assert torch.equal(a, e), f"{what}[{i}] differs from the contiguous call's"


# --- (a) no input written ----------------------------------------------------------------------------------

def integrity_cases():
    for op in OPS:
        for backend in backends_of(op):
            dtypes = supported_dtypes(backend or "reference")
            for dtype in (torch.float32, torch.float64):
                if dtype in dtypes:
                    for size in SIZES:
                        yield pytest.param(op, backend, dtype, size,
                                           id=f"{op.name}-{backend or 'torch'}-{str(dtype)[6:]}-{size}")


@pytest.mark.parametrize(("op", "backend", "dtype", "size"), integrity_cases())
def test_inputs_unchanged(op, backend, dtype, size):
    tensors = op.make(SIZES[size], dtype)
    saved = {name: t.clone() for name, t in tensors.items()}
    for name in op.grads:
        tensors[name].requires_grad_()
    outputs = as_tuple(op(backend, tensors))
    assert_unchanged(tensors, saved, "forward")
    for i, out in enumerate(outputs):
        for name, t in tensors.items():
            assert out.untyped_storage().data_ptr() != t.untyped_storage().data_ptr(), \
                f"output {i} shares its storage with the input {name}"
    differentiable = [out for out in outputs if out.requires_grad]
    if differentiable:
        torch.autograd.backward(differentiable, [torch.randn_like(out) for out in differentiable])
        assert_unchanged(tensors, saved, "backward")


# --- (b) views give the contiguous result ------------------------------------------------------------------

def strided(t: torch.Tensor) -> torch.Tensor:
    """``t`` with a gap after every element, stored transposed (noncontiguous; integers get -1 gaps)."""
    if t.is_floating_point():
        return noncontiguous(t)
    buffer = torch.full([2 * size for size in reversed(t.shape)], -1, dtype=t.dtype)
    return buffer.permute(*reversed(range(t.dim())))[tuple(slice(None, None, 2) for _ in t.shape)].copy_(t)


def expanded(t: torch.Tensor) -> torch.Tensor:
    """``t``'s first slice along its last dimension of size > 1, expanded back with stride 0 (new values)."""
    dim = max(d for d, size in enumerate(t.shape) if size > 1)
    return t.narrow(dim, 0, 1).expand(t.shape)


def transposed(t: torch.Tensor) -> torch.Tensor:
    """``t``'s values stored with the dimensions in reverse order (column-major)."""
    order = list(reversed(range(t.dim())))
    return t.permute(order).contiguous().permute(order)


VIEWS = {"strided": strided, "expanded": expanded, "transposed": transposed}


def view_applies(view: str, t: torch.Tensor, structured: bool) -> bool:
    long_dims = sum(size > 1 for size in t.shape)
    if view == "expanded":
        return long_dims >= 1 and not structured
    if view == "transposed":
        return long_dims >= 2
    return True


def view_cases():
    size = SIZES["odd"]
    for op in OPS:
        for name, t in op.make(size, torch.float32).items():
            for view in VIEWS:
                if view_applies(view, t, name in op.structured):
                    for backend in backends_of(op):
                        yield pytest.param(op, name, view, backend,
                                           id=f"{op.name}-{name}-{view}-{backend or 'torch'}")


@functools.cache
def contiguous_run(op_name: str, backend: str | None):
    """The op's float32 inputs at the odd size, the same on every call, and run()'s result on them."""
    op = OPS_BY_NAME[op_name]
    torch.manual_seed(zlib.crc32(op_name.encode()))
    tensors = op.make(SIZES["odd"], torch.float32)
    return tensors, run(op, backend, tensors)


@pytest.mark.parametrize(("op", "argument", "view", "backend"), view_cases())
def test_view_argument(op, argument, view, backend):
    tensors, (expected_outputs, cotangents, expected_grads) = contiguous_run(op.name, backend)
    viewed = VIEWS[view](tensors[argument])
    assert not viewed.is_contiguous()
    if view == "expanded":  # new values: compared with the contiguous call on the same values
        tensors = {**tensors, argument: viewed.contiguous()}
        expected_outputs, _, expected_grads = run(op, backend, tensors, cotangents)
    outputs, _, grads = run(op, backend, {**tensors, argument: viewed}, cotangents)
    assert_same_result(outputs, expected_outputs, "outputs")
    assert_same_result(grads, expected_grads, f"gradients of {op.grads}")
