"""Argument checks of gmk.nn's modules, the WaveNet model and µ-law companding (issue 18, items 8, 9, 10
and 14): bad constructor arguments and bad inputs raise a TypeError or ValueError naming the argument,
at construction or at the first forward, never from deep inside torch."""
import pytest
import torch

import gmkernels as gmk
from gmkernels.models.wavenet import WaveNet, WaveNetConfig
from gmkernels.nn.coupling import ZeroConv2d

nn = gmk.nn

# (call, error, message pattern)
BAD_CONSTRUCTORS = {
    "actnorm-channels": (lambda: nn.ActNorm(0), ValueError, "ActNorm: num_channels"),
    "actnorm-eps": (lambda: nn.ActNorm(2, eps=-1.0), ValueError, "ActNorm: eps"),
    "actnorm-eps-str": (lambda: nn.ActNorm(2, eps="1e-6"), ValueError, "ActNorm: eps"),
    "coupling-odd": (lambda: nn.AffineCoupling(3), ValueError, "AffineCoupling: num_channels"),
    "coupling-hidden": (lambda: nn.AffineCoupling(4, hidden_channels=0), ValueError,
                        "AffineCoupling: hidden_channels"),
    "zero-conv-channels": (lambda: ZeroConv2d(2, -1), ValueError, "ZeroConv2d: out_channels"),
    "zero-conv-factor": (lambda: ZeroConv2d(2, 2, logscale_factor=float("inf")), ValueError,
                         "ZeroConv2d: logscale_factor"),
    "flow-step-lu": (lambda: nn.FlowStep(2, 4, lu="False"), TypeError, "FlowStep: lu must be a bool"),
    "flow-step-channels": (lambda: nn.FlowStep(-2, 4), ValueError, "num_channels"),
    "gated-dim": (lambda: nn.GatedActivation(dim="1"), TypeError, "GatedActivation: dim"),
    "invconv-channels": (lambda: nn.InvConv2d(True), ValueError, "InvConv2d: num_channels"),
    "shifted-in-channels": (lambda: nn.ShiftedConv2d(-1, 4, 3), ValueError, "ShiftedConv2d: in_channels"),
    "shifted-out-channels": (lambda: nn.ShiftedConv2d(4, 0, 3), ValueError, "ShiftedConv2d: out_channels"),
    "shifted-kernel": (lambda: nn.ShiftedConv2d(4, 4, (0, 3)), ValueError, "ShiftedConv2d: kernel_size"),
    "shifted-kernel-triple": (lambda: nn.ShiftedConv2d(4, 4, (3, 3, 3)),
                              ValueError, "ShiftedConv2d: kernel_size"),
    "shifted-kernel-str": (lambda: nn.ShiftedConv2d(4, 4, "3"), ValueError, "ShiftedConv2d: kernel_size"),
    "shifted-bias": (lambda: nn.ShiftedConv2d(4, 4, 3, bias="False"),
                     TypeError, "ShiftedConv2d: bias must be a bool"),
    "masked-bias": (lambda: nn.MaskedConv2d(4, 4, 3, bias=0), TypeError, "MaskedConv2d: bias must be a bool"),
    "masked-channels": (lambda: nn.MaskedConv2d(-1, 4, 3), ValueError, "in_channels"),
    "causal-channels": (lambda: nn.CausalConv1d(-1, 4, 2), ValueError, "CausalConv1d: in_channels"),
    "causal-kernel": (lambda: nn.CausalConv1d(4, 4, 0), ValueError, "CausalConv1d: kernel_size"),
    "causal-dilation": (lambda: nn.CausalConv1d(4, 4, 2, dilation=0), ValueError, "CausalConv1d: dilation"),
    "causal-bias": (lambda: nn.CausalConv1d(4, 4, 2, bias="no"),
                    TypeError, "CausalConv1d: bias must be a bool"),
    "layer-residual": (lambda: nn.WaveNetLayer(0, 4), ValueError, "WaveNetLayer: residual_channels"),
    "layer-skip": (lambda: nn.WaveNetLayer(4, -4), ValueError, "WaveNetLayer: skip_channels"),
    "layer-scale": (lambda: nn.WaveNetLayer(4, 4, residual_scale=float("nan")), ValueError,
                    "WaveNetLayer: residual_scale"),
    "layer-bias": (lambda: nn.WaveNetLayer(4, 4, bias=None), TypeError, "WaveNetLayer: bias must be a bool"),
    "loss-channels": (lambda: nn.DiscretizedLogisticMixtureLoss(num_channels=True),
                      ValueError, "num_channels"),
    "wavenet-config": (lambda: WaveNet({"layers": 2}), TypeError, "WaveNet: config"),
    "wavenet-config-kernel": (lambda: WaveNetConfig(kernel_size=0), ValueError, "WaveNetConfig: kernel_size"),
    "wavenet-config-scale": (lambda: WaveNetConfig(residual_scale=True),
                             ValueError, "WaveNetConfig: residual_scale"),
}


@pytest.mark.parametrize(("call", "error", "pattern"), BAD_CONSTRUCTORS.values(), ids=BAD_CONSTRUCTORS.keys())
def test_issue18_constructors_validate_their_arguments(call, error, pattern):
    with pytest.raises(error, match=pattern):
        call()


def _tiny_wavenet():
    return WaveNet(WaveNetConfig(layers=2, stacks=1, residual_channels=4, skip_channels=4, num_classes=8))


BAD_INPUTS = {
    "flow-step-channels": (lambda: nn.FlowStep(2, 4)(torch.randn(2, 4, 2, 2)), ValueError,
                           r"FlowStep: input must be \(N, 2, H, W\)"),
    "flow-step-reverse-rank": (lambda: nn.FlowStep(2, 4).reverse(torch.randn(2, 2, 4)), ValueError,
                               "FlowStep.reverse: input"),
    "squeeze-tuple": (lambda: nn.Squeeze2d()((torch.randn(1, 1, 2, 2),)),
                      TypeError, "Squeeze2d: input must be"),
    "squeeze-reverse-list": (lambda: nn.Squeeze2d().reverse([1.0]), TypeError, "Squeeze2d.reverse: input"),
    "coupling-uint8": (lambda: nn.AffineCoupling(2, 4)(torch.zeros(1, 2, 2, 2, dtype=torch.uint8)), TypeError,
                       "AffineCoupling: input must be a floating-point tensor"),
    "actnorm-channels": (lambda: nn.ActNorm(3)(torch.randn(2, 4, 5)),
                         ValueError, r"ActNorm: input must be \(N, 3"),
    "actnorm-integer": (lambda: nn.ActNorm(3)(torch.zeros(2, 3, 5, dtype=torch.long)),
                        TypeError, "ActNorm: input"),
    "invconv-channels": (lambda: nn.InvConv2dLU(3)(torch.randn(2, 2, 5)), ValueError, "InvConv2dLU: input"),
    "invconv-reverse": (lambda: nn.InvConv2d(3).reverse("y"), TypeError, "InvConv2d.reverse: input"),
    # found by the fuzz campaign: torch's unnamed dtype error, or the op's naming a weight the user never passed
    "coupling-half": (lambda: nn.AffineCoupling(2, 4)(torch.randn(1, 2, 2, 2).half()), TypeError,
                      r"AffineCoupling: input must have the module's dtype torch.float32 .*got torch.float16"),
    "flow-step-bfloat16": (lambda: nn.FlowStep(2, 4)(torch.randn(1, 2, 2, 2).bfloat16()), TypeError,
                           "FlowStep: input must have the module's dtype"),
    "flow-step-reverse-half": (lambda: nn.FlowStep(2, 4).reverse(torch.randn(1, 2, 2, 2).half()), TypeError,
                               "FlowStep.reverse: input must have the module's dtype"),
    "masked-input-channels": (lambda: nn.MaskedConv2d(3, 4, 3)(torch.randn(1, 2, 5, 5)), ValueError,
                              r"MaskedConv2d: input must be \(N, 3, H, W\)"),
    "shifted-input-channels": (lambda: nn.ShiftedConv2d(3, 4, 3)(torch.randn(1, 4, 5, 5)), ValueError,
                               r"ShiftedConv2d: input must be \(N, 3, H, W\)"),
    "causal-input-channels": (lambda: nn.CausalConv1d(3, 4, 2)(torch.randn(1, 2, 5)), ValueError,
                              r"CausalConv1d: input must be \(N, 3, \*spatial\)"),
    "wavenet-layer-input-channels": (lambda: nn.WaveNetLayer(4, 3)(torch.randn(1, 2, 5)), ValueError,
                                     r"WaveNetLayer: input must be \(N, 4, \*spatial\)"),
    "wavenet-generate-zero": (lambda: _tiny_wavenet().generate(0), ValueError,
                              "WaveNet.generate: num_samples must be an int >= 1, got 0"),
    "wavenet-generate-batch": (lambda: _tiny_wavenet().generate(2, batch_size=0), ValueError,
                               "WaveNet.generate: batch_size"),
    "wavenet-generate-generator": (lambda: _tiny_wavenet().generate(2, generator=0), TypeError,
                                   "WaveNet.generate: generator must be a torch.Generator"),
    "wavenet-check-inputs": (lambda: _tiny_wavenet()(torch.zeros(1, 3, dtype=torch.long),
                                                     check_inputs="False"),
                             TypeError, "WaveNet: check_inputs must be a bool"),
}


@pytest.mark.parametrize(("call", "error", "pattern"), BAD_INPUTS.values(), ids=BAD_INPUTS.keys())
def test_issue18_modules_validate_their_inputs(call, error, pattern):
    with pytest.raises(error, match=pattern):
        call()


@pytest.mark.parametrize(("kwargs", "pattern"), [
    ({"dtype": "float32"}, "dtype must be a floating-point torch.dtype"),
    ({"dtype": None}, "dtype must be a floating-point torch.dtype"),
    ({"dtype": torch.int64}, "dtype must be a floating-point torch.dtype"),
])
def test_issue18_mu_law_decode_dtype_must_be_a_float_dtype(kwargs, pattern):
    with pytest.raises(TypeError, match=f"mu_law_decode: {pattern}"):
        gmk.mu_law_decode(torch.tensor([0, 3, 7]), 8, **kwargs)
    assert gmk.mu_law_decode(torch.tensor([0, 7]), 8, dtype=torch.float64).dtype == torch.float64


@pytest.mark.parametrize(("call", "error", "pattern"), [
    (lambda: gmk.mu_law_decode(torch.tensor([True]), 8), TypeError, "mu_law_decode: classes"),
    (lambda: gmk.mu_law_encode(torch.zeros(3), 1), ValueError, "mu_law_encode: num_classes"),
    (lambda: gmk.mu_law_encode(torch.zeros(3), True), ValueError, "mu_law_encode: num_classes"),
    (lambda: gmk.mu_law_encode([0.0], 8), TypeError, "mu_law_encode: audio"),
    (lambda: gmk.mu_law_encode(torch.zeros(3, dtype=torch.long), 8), TypeError, "mu_law_encode: audio"),
])
def test_issue18_mu_law_arguments(call, error, pattern):
    with pytest.raises(error, match=pattern):
        call()
