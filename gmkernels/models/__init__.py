"""Complete models built on gmkernels' ops. ``MODELS``: the command-line name of each model -> its class
(``config_class``: its config dataclass; ``kind``: "image" or "audio")."""
from .gated_pixelcnn import GatedPixelCNN, GatedPixelCNNConfig
from .glow import Glow, GlowConfig
from .pixelcnn import PixelCNN, PixelCNNConfig
from .pixelcnn_pp import PixelCNNpp, PixelCNNppConfig
from .realnvp import RealNVP, RealNVPConfig
from .wavenet import WaveNet, WaveNetConfig

MODELS = {"pixelcnn": PixelCNN, "gated_pixelcnn": GatedPixelCNN, "pixelcnnpp": PixelCNNpp, "wavenet": WaveNet,
          "glow": Glow, "realnvp": RealNVP}

__all__ = ["MODELS", "GatedPixelCNN", "GatedPixelCNNConfig", "Glow", "GlowConfig", "RealNVP", "RealNVPConfig",
           "PixelCNN", "PixelCNNConfig", "PixelCNNpp",
           "PixelCNNppConfig", "WaveNet", "WaveNetConfig"]
