"""Complete models built on gmkernels' ops. ``MODELS``: the command-line name of each model -> its class
(``config_class``: its config dataclass; ``kind``: "image" or "audio")."""
from .gated_pixelcnn import GatedPixelCNN, GatedPixelCNNConfig
from .pixelcnn import PixelCNN, PixelCNNConfig
from .pixelcnn_pp import PixelCNNpp, PixelCNNppConfig
from .wavenet import WaveNet, WaveNetConfig

MODELS = {"pixelcnn": PixelCNN, "gated_pixelcnn": GatedPixelCNN, "pixelcnnpp": PixelCNNpp, "wavenet": WaveNet}

__all__ = ["MODELS", "GatedPixelCNN", "GatedPixelCNNConfig", "PixelCNN", "PixelCNNConfig", "PixelCNNpp",
           "PixelCNNppConfig", "WaveNet", "WaveNetConfig"]
