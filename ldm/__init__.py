"""The LDM's networks around the U-Net: the VAE, the CLIP text encoder (and, to come, the pipeline)."""
from .clip_config import CLIPTextConfig
from .clip_text import CLIPTextModel, CLIPTextOutput
from .vae import AutoencoderKL, DiagonalGaussian
from .vae_config import VAEConfig

__all__ = ["CLIPTextConfig", "CLIPTextModel", "CLIPTextOutput", "AutoencoderKL", "DiagonalGaussian", "VAEConfig"]
