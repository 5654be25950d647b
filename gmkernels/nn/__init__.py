"""Drop-in nn.Modules built on gmkernels' ops."""
from .gated import GatedActivation
from .logistic_mixture import DiscretizedLogisticMixtureLoss
from .masked_conv import MaskedConv2d, ShiftedConv2d

__all__ = ["DiscretizedLogisticMixtureLoss", "GatedActivation", "MaskedConv2d", "ShiftedConv2d"]
