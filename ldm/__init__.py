"""The LDM around the U-Net: the VAE, the CLIP text encoder, the tokenizers, and the text-to-image pipeline."""
from .clip_config import CLIPTextConfig
from .clip_text import CLIPTextModel, CLIPTextOutput
from .clip_tokenizer import CLIPTokenizer
from .images import load_image
from .pipeline import GenerationResult, StableDiffusion
from .tokenizer import PromptTokenizer, WordTokenizer
from .vae import AutoencoderKL, DiagonalGaussian
from .vae_config import VAEConfig

__all__ = ["CLIPTextConfig", "CLIPTextModel", "CLIPTextOutput", "CLIPTokenizer", "PromptTokenizer", "WordTokenizer",
           "AutoencoderKL", "DiagonalGaussian", "VAEConfig", "StableDiffusion", "GenerationResult", "load_image"]
