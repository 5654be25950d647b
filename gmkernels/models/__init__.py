"""Complete models built on gmkernels' ops."""
from .wavenet import WaveNet, WaveNetConfig

__all__ = ["WaveNet", "WaveNetConfig"]
