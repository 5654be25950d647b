"""Drop-in nn.Modules built on gmkernels' ops."""
from .actnorm import ActNorm
from .coupling import AffineCoupling
from .flow import FlowStep, Squeeze2d
from .gated import GatedActivation
from .invconv import InvConv2d, InvConv2dLU
from .logistic_mixture import DiscretizedLogisticMixtureLoss
from .masked_conv import MaskedConv2d, ShiftedConv2d

__all__ = ["AffineCoupling", "FlowStep", "Squeeze2d",
           "ActNorm", "InvConv2d", "InvConv2dLU",
           "DiscretizedLogisticMixtureLoss", "GatedActivation", "MaskedConv2d", "ShiftedConv2d"]
