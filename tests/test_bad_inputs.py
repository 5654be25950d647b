"""One table of bad inputs per op, run against the public function, torch.ops.gmkernels.<op> and
torch.ops.gmk_triton.<op>: each must raise the same exception type naming the same argument.

A row holds the op's arguments in the op's own form (the public functions take the same values, through
``PUBLIC``); the row is bad in both forms. The C++ ops check in C++ (TORCH_CHECK_VALUE / _TYPE), the Triton
ops and the public function through the op's Python declaration (gmkernels/ops/<family>.py).
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import pytest
import torch

import gmkernels as gmk
from gmkernels.ops._declare import CPP_NAMESPACE, DECLARED, TRITON_NAMESPACE
from gmkernels.ops.wavenet_generate import wavenet_generate
from gmkernels.reference.wavenet_generate import GenerationWeights


@dataclass(frozen=True)
class Bad:
    op: str
    args: tuple
    error: type
    names: str  # the argument the message must name (a regex word)


def _randn(*shape, dtype=torch.float32):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(0)).to(dtype)


# --- the public functions, called with an op's arguments -------------------------------------------

def _gated(x, cond, activation):
    return gmk.gated_activation(x, cond, activation=activation)


def _nll(params, x, num_bins, log_scale_min):
    return gmk.discretized_logistic_mixture_nll(params, x, num_bins=num_bins, log_scale_min=log_scale_min,
                                                check_inputs=False)


def _sample(params, gumbel_u, logistic_u, num_bins, log_scale_min):
    return gmk.discretized_logistic_mixture_sample(params, num_channels=logistic_u.shape[1], num_bins=num_bins,
                                                   log_scale_min=log_scale_min)


def _masked(x, weight, bias, mask_type, color_groups):
    return gmk.masked_conv2d(x, weight, bias, mask_type=mask_type, color_groups=color_groups)


def _masked_gated(x, weight, bias, cond, mask_type, color_groups, gate):
    return gmk.masked_conv2d(x, weight, bias, mask_type=mask_type, color_groups=color_groups, gate=gate, cond=cond)


def _shifted(x, weight, bias, shift):
    return gmk.shifted_conv2d(x, weight, bias, shift=shift)


def _actnorm(x, bias, log_scale, reverse):
    return gmk.actnorm(x, bias, log_scale, reverse=reverse)


def _conv1x1(x, weight, bias):
    return gmk.invertible_conv1x1(x, weight)


def _coupling(x, h, transform, layout, reverse):
    return gmk.affine_coupling(x, h, transform=transform, layout=layout, reverse=reverse)


def _causal(x, weight, bias, dilation):
    return gmk.causal_conv1d(x, weight, bias, dilation=dilation)


def _layer(x, conv_weight, conv_bias, res_weight, res_bias, skip_weight, skip_bias, cond, dilation, scale):
    return gmk.wavenet_layer(x, conv_weight, conv_bias, res_weight, res_bias, skip_weight, skip_bias, cond,
                             dilation=dilation, residual_scale=scale)


def _generate(*args):
    weights, (cond, uniform, dilations, start_class, scale, temperature, head, log_scale_min) = args[:11], args[11:]
    return wavenet_generate(GenerationWeights(*weights), dilations, uniform, cond, start_class=start_class,
                            residual_scale=scale, temperature=temperature, head=head, log_scale_min=log_scale_min)


def _vector_quantize(x, codebook):
    return gmk.vector_quantize(x, codebook, dim=1, return_distance=True)


def _vector_quantize_statistics(x, indices, num_codes):
    return gmk.vector_quantize_statistics(x, indices, num_codes, dim=1)


PUBLIC = {"gated": _gated, "logistic_mixture_nll": _nll, "logistic_mixture_sample": _sample,
          "masked_conv2d": _masked, "masked_conv2d_gated": _masked_gated, "shifted_conv2d": _shifted,
          "actnorm": _actnorm, "conv1x1": _conv1x1, "coupling": _coupling, "causal_conv1d": _causal,
          "wavenet_layer": _layer, "wavenet_generate": _generate, "vector_quantize": _vector_quantize,
          "vector_quantize_statistics": _vector_quantize_statistics}


# --- the table -----------------------------------------------------------------------------------------

def _gated_rows():
    x, cond = _randn(2, 6, 5), _randn(2, 6, 5)
    return {
        "x-int": Bad("gated", (x.long(), None, "tanh"), TypeError, "x"),
        "x-odd-channels": Bad("gated", (x[:, :5], None, "tanh"), ValueError, "x"),
        "cond-shape": Bad("gated", (x, cond[:, :, :4], "tanh"), ValueError, "cond"),
        "cond-dtype": Bad("gated", (x, cond.half(), "tanh"), TypeError, "cond"),
        "activation": Bad("gated", (x, cond, "relu"), ValueError, "activation"),
    }


def _mixture_rows():
    params, x = _randn(2, 10, 4), _randn(2, 3, 4).clamp(-1, 1)
    gumbel, logistic = torch.rand(2, 1, 4), torch.rand(2, 3, 4)
    return {
        "params-channels": Bad("logistic_mixture_nll", (params[:, :9], x, 256, -7.0), ValueError, "params"),
        "x-channels": Bad("logistic_mixture_nll", (params, x[:, :2], 256, -7.0), ValueError, "x"),
        "num-bins": Bad("logistic_mixture_nll", (params, x, 1, -7.0), ValueError, "num_bins"),
        "sample-num-bins": Bad("logistic_mixture_sample", (params, gumbel, logistic, 1, -7.0), ValueError,
                               "num_bins"),
        "sample-params": Bad("logistic_mixture_sample", (params[:, :7], gumbel, logistic, 256, -7.0), ValueError,
                             "params"),
    }


def _conv_rows():
    x, w, b = _randn(2, 6, 5, 5), _randn(8, 6, 3, 3), _randn(8)
    return {
        "masked-x-3d": Bad("masked_conv2d", (x[0], w, b, "B", 1), ValueError, "x"),
        "masked-weight-cin": Bad("masked_conv2d", (x, w[:, :5], b, "B", 1), ValueError, "weight"),
        "masked-weight-even": Bad("masked_conv2d", (x, w[:, :, :2, :2], b, "B", 1), ValueError, "weight"),
        "masked-weight-dtype": Bad("masked_conv2d", (x, w.half(), b, "B", 1), TypeError, "weight"),
        "masked-bias-shape": Bad("masked_conv2d", (x, w, b[:7], "B", 1), ValueError, "bias"),
        "masked-mask-type": Bad("masked_conv2d", (x, w, b, "C", 1), ValueError, "mask_type"),
        "masked-groups": Bad("masked_conv2d", (x, w, b, "B", 4), ValueError, "color_groups"),
        "masked-all-masked": Bad("masked_conv2d", (x, w[:, :, 1:2, 1:2], b, "A", 1), ValueError, "mask_type"),
        "gated-gate": Bad("masked_conv2d_gated", (x, w, b, None, "B", 1, "relu"), ValueError, "gate"),
        "gated-odd-cout": Bad("masked_conv2d_gated", (x, w[:7], b[:7], None, "B", 1, "tanh"), ValueError, "gate"),
        "gated-cond": Bad("masked_conv2d_gated", (x, w, b, _randn(2, 4, 1, 1), "B", 1, "tanh"), ValueError, "cond"),
        "gated-groups": Bad("masked_conv2d_gated", (_randn(2, 3, 5, 5), _randn(6, 3, 3, 3), None, None, "B", 3,
                                                    "tanh"), ValueError, "color_groups"),
        "shifted-shift": Bad("shifted_conv2d", (x, w[:, :, :2], b, "up"), ValueError, "shift"),
        "shifted-even-width": Bad("shifted_conv2d", (x, w[:, :, :2, :2], b, "down"), ValueError, "shift"),
        "shifted-bias-dtype": Bad("shifted_conv2d", (x, w, b.half(), "down"), TypeError, "bias"),
    }


def _flow_rows():
    x, p = _randn(2, 4, 3), _randn(4)
    h = _randn(2, 4, 3)
    return {
        "actnorm-x-int": Bad("actnorm", (x.long(), p, p, False), TypeError, "x"),
        "actnorm-bias-shape": Bad("actnorm", (x, p[:3], p, False), ValueError, "bias"),
        "actnorm-log-scale-shape": Bad("actnorm", (x, p, p[:3], False), ValueError, "log_scale"),
        "conv1x1-weight-shape": Bad("conv1x1", (x, _randn(4, 3), None), ValueError, "weight"),
        "coupling-odd-channels": Bad("coupling", (x[:, :3], h[:, :3], "glow", "halves", False), ValueError, "x"),
        "coupling-h-shape": Bad("coupling", (x, h[:, :2], "glow", "halves", False), ValueError, "h"),
        "coupling-h-dtype": Bad("coupling", (x, h.half(), "glow", "halves", False), TypeError, "h"),
        "coupling-transform": Bad("coupling", (x, h, "affine", "halves", False), ValueError, "transform"),
        "coupling-layout": Bad("coupling", (x, h, "glow", "stripes", False), ValueError, "layout"),
    }


def _wavenet_rows():
    x, w, b = _randn(2, 3, 7), _randn(4, 3, 2), _randn(4)
    r, s = 3, 5
    layer = (x, _randn(2 * r, r, 2), None, _randn(r, r), None, _randn(s, r), None, None, 1, 1.0)

    def with_(index, value):
        return tuple(value if i == index else arg for i, arg in enumerate(layer))

    weights = [_randn(4, 2), _randn(1, 4, 2, 2), _randn(1, 4), _randn(1, 2, 2), _randn(1, 2), _randn(1, 3, 2),
               _randn(1, 3), _randn(5, 3), _randn(5), _randn(4, 5), _randn(4)]
    generate = (*weights, None, torch.rand(2, 3, 1), [1], 0, 1.0, 1.0, "softmax", -7.0)

    def generate_with(index, value):
        return tuple(value if i == index else arg for i, arg in enumerate(generate))

    return {
        "causal-x-2d": Bad("causal_conv1d", (x[0], w, b, 1), ValueError, "x"),
        "causal-weight-cin": Bad("causal_conv1d", (x, w[:, :2], b, 1), ValueError, "weight"),
        "causal-bias-shape": Bad("causal_conv1d", (x, w, b[:3], 1), ValueError, "bias"),
        "causal-dilation": Bad("causal_conv1d", (x, w, b, 0), ValueError, "dilation"),
        "layer-conv-weight": Bad("wavenet_layer", with_(1, _randn(2 * r + 1, r, 2)), ValueError, "conv_weight"),
        "layer-res-weight": Bad("wavenet_layer", with_(3, _randn(r, r + 1)), ValueError, "res_weight"),
        "layer-skip-weight": Bad("wavenet_layer", with_(5, _randn(s, r + 1)), ValueError, "skip_weight"),
        "layer-skip-bias": Bad("wavenet_layer", with_(6, _randn(s + 1)), ValueError, "skip_bias"),
        "layer-cond-shape": Bad("wavenet_layer", with_(7, _randn(2, 2 * r + 1, 7)), ValueError, "cond"),
        "layer-dilation": Bad("wavenet_layer", with_(8, 0), ValueError, "dilation"),
        "generate-start-class": Bad("wavenet_generate", generate_with(14, 9), ValueError, "start_class"),
        "generate-head": Bad("wavenet_generate", generate_with(17, "argmax"), ValueError, "head"),
        "generate-temperature": Bad("wavenet_generate", generate_with(16, 0.0), ValueError, "temperature"),
        "generate-uniform": Bad("wavenet_generate", generate_with(12, torch.rand(2, 3, 2)), ValueError, "uniform"),
    }


def _vector_quantize_rows():
    x, codebook, indices = _randn(2, 5, 3), _randn(9, 5), torch.zeros(2, 3, dtype=torch.int64)
    return {
        "vq-x-int": Bad("vector_quantize", (x.long(), codebook), TypeError, "x"),
        "vq-code-dim-mismatch": Bad("vector_quantize", (x, codebook[:, :4]), ValueError, "codebook"),
        "vq-empty-codebook": Bad("vector_quantize", (x, codebook[:0]), ValueError, "codebook"),
        "vq-codebook-1d": Bad("vector_quantize", (x, codebook[0]), ValueError, "codebook"),
        "vq-codebook-int": Bad("vector_quantize", (x, codebook.long()), TypeError, "codebook"),
        "vq-codebook-dtype": Bad("vector_quantize", (x, codebook.double()), TypeError, "codebook"),
        "vq-statistics-indices-dtype": Bad("vector_quantize_statistics", (x, indices.int(), 9), TypeError, "indices"),
        "vq-statistics-indices-shape": Bad("vector_quantize_statistics", (x, indices[:, :2], 9), ValueError,
                                           "indices"),
        "vq-statistics-num-codes": Bad("vector_quantize_statistics", (x, indices, 0), ValueError, "num_codes"),
    }


TABLE = {**_gated_rows(), **_mixture_rows(), **_conv_rows(), **_flow_rows(), **_wavenet_rows(),
         **_vector_quantize_rows()}


def _entry_points():
    points = [pytest.param("public", id="public")]
    if gmk.has_extension():
        points.append(pytest.param(CPP_NAMESPACE, id="cpp"))
    if "triton" in gmk.available_backends("cpu"):
        points.append(pytest.param(TRITON_NAMESPACE, id="triton"))
    return points


def _call(entry: str, bad: Bad):
    if entry == "public":
        return PUBLIC[bad.op](*bad.args)
    namespace = getattr(torch.ops, entry)
    if not hasattr(namespace, bad.op):
        pytest.skip(f"{entry} has no {bad.op} op")
    return getattr(namespace, bad.op)(*bad.args)


@pytest.mark.parametrize("entry", _entry_points())
@pytest.mark.parametrize("bad", TABLE.values(), ids=TABLE.keys())
def test_each_entry_point_rejects_the_bad_input_naming_the_argument(entry, bad):
    with pytest.raises(bad.error, match=rf"\b{re.escape(bad.names)}\b"):
        _call(entry, bad)


# Ops whose table lives with their family's tests (they follow the same pattern there).
TABLES_ELSEWHERE = {"bias_act", "upfirdn2d", "cached_conv2d"}


def test_the_table_covers_every_declared_forward_op():
    """Every forward op has rows here; backward ops are reached through autograd and the forward's checks."""
    forward = {name for name in DECLARED if "_backward" not in name}
    assert {bad.op for bad in TABLE.values()} == set(PUBLIC) == forward - TABLES_ELSEWHERE
