"""Complete models built on gmkernels' ops. ``MODELS``: the command-line name of each model -> its class
(``config_class``: its config dataclass; ``kind``: "image", "audio", "gan", "vqvae" or "vqvae_prior", the
training adapter of gmkernels.training.kinds)."""
from .dcgan import DCGAN, DCGANConfig
from .gated_pixelcnn import GatedPixelCNN, GatedPixelCNNConfig
from .glow import Glow, GlowConfig
from .pixelcnn import PixelCNN, PixelCNNConfig
from .pixelcnn_pp import PixelCNNpp, PixelCNNppConfig
from .realnvp import RealNVP, RealNVPConfig
from .stylegan2 import StyleGAN2, StyleGAN2Config
from .vae import VAE, VAEConfig
from .vqvae import VQVAE, VQVAEConfig, VQVAEPrior, VQVAEPriorConfig
from .wavenet import WaveNet, WaveNetConfig

MODELS = {"pixelcnn": PixelCNN, "gated_pixelcnn": GatedPixelCNN, "pixelcnnpp": PixelCNNpp, "wavenet": WaveNet,
          "dcgan": DCGAN, "glow": Glow, "realnvp": RealNVP, "stylegan2": StyleGAN2,
          "vae": VAE, "vqvae": VQVAE, "vqvae-prior": VQVAEPrior}

__all__ = ["MODELS", "DCGAN", "DCGANConfig", "GatedPixelCNN", "GatedPixelCNNConfig", "Glow", "GlowConfig",
           "RealNVP", "RealNVPConfig", "PixelCNN", "PixelCNNConfig", "PixelCNNpp",
           "PixelCNNppConfig", "StyleGAN2", "StyleGAN2Config", "VAE", "VAEConfig",
           "VQVAE", "VQVAEConfig", "VQVAEPrior", "VQVAEPriorConfig",
           "WaveNet", "WaveNetConfig"]
