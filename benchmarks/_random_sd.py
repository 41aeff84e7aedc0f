"""SD v1.5's three networks with random weights, for the benchmarks that time the SD-size path
(no real weights can be downloaded here). Not a benchmark itself: run_all.py skips files named _*."""
from __future__ import annotations

import dataclasses

import torch

from ddpm.schedule import NoiseSchedule
from ldm.clip_config import CLIPTextConfig
from ldm.clip_text import CLIPTextModel
from ldm.pipeline import StableDiffusion
from ldm.tokenizer import PromptTokenizer
from ldm.vae import AutoencoderKL
from ldm.vae_config import VAEConfig
from unet.config import UNetConfig
from unet.model import UNet


def sd_v1_random(tokenizer: PromptTokenizer, seed: int = 0, image_size: int = 512) -> StableDiffusion:
    """U-Net, VAE and text encoder at SD v1.5's size, weights drawn with variance 1 / fan_in (norm
    scales around 1), built on the meta device first so that no default initialisation runs; the
    text encoder's special ids follow ``tokenizer``."""
    text = dataclasses.replace(CLIPTextConfig.sd_v1(), bos_token_id=tokenizer.bos_id, eos_token_id=tokenizer.eos_id,
                               pad_token_id=tokenizer.pad_id)
    with torch.device("meta"):
        parts = UNet(UNetConfig.sd_v1()), AutoencoderKL(VAEConfig.sd_v1()), CLIPTextModel(text)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for model in parts:
            model.to_empty(device="cpu")
            for name, p in model.named_parameters():
                if p.ndim >= 2:
                    p.normal_(0.0, p[0].numel() ** -0.5, generator=generator)
                elif name.endswith("weight"):  # norm scales
                    p.normal_(1.0, 0.1, generator=generator)
                else:
                    p.normal_(0.0, 0.1, generator=generator)
    return StableDiffusion(*parts, tokenizer, NoiseSchedule.from_name("scaled_linear"), image_size=image_size)
