"""Drop-in nn.Modules built on gmkernels' ops."""
from .actnorm import ActNorm
from .bias_act import FusedLeakyReLU
from .causal_conv import CausalConv1d, WaveNetLayer
from .coupling import AffineCoupling, ZeroConv2d
from .flow import FlowStep, Squeeze2d
from .gated import GatedActivation
from .invconv import InvConv2d, InvConv2dLU
from .logistic_mixture import DiscretizedLogisticMixtureLoss
from .masked_conv import MaskedConv2d, ShiftedConv2d
from .upfirdn2d import Blur, Downsample2d, Upsample2d
from .vector_quantize import VectorQuantizer

__all__ = ["ActNorm", "AffineCoupling", "CausalConv1d", "DiscretizedLogisticMixtureLoss", "FlowStep",
           "GatedActivation", "InvConv2d", "InvConv2dLU", "MaskedConv2d", "ShiftedConv2d", "Squeeze2d",
           "WaveNetLayer", "Blur", "Downsample2d", "FusedLeakyReLU", "Upsample2d", "VectorQuantizer",
           "ZeroConv2d"]
