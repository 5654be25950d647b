"""Drop-in nn.Modules built on gmkernels' ops."""
from .gated import GatedActivation

__all__ = ["GatedActivation"]
