"""Drop-in nn.Modules built on gmkernels' ops."""
from .causal_conv import CausalConv1d, WaveNetLayer
from .gated import GatedActivation
from .logistic_mixture import DiscretizedLogisticMixtureLoss
from .masked_conv import MaskedConv2d, ShiftedConv2d

__all__ = ["CausalConv1d", "DiscretizedLogisticMixtureLoss", "GatedActivation", "MaskedConv2d", "ShiftedConv2d",
           "WaveNetLayer"]
