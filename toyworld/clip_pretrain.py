"""A CLIP of the toy world: the text encoder trained contrastively, then frozen, as SD freezes CLIP.

Stable Diffusion does not train its text encoder: it takes CLIP's (Radford et al. 2021), trained to
match captions with images and frozen. The toy model can be built the same way. Two encoders map a
batch of N (caption, image) pairs to unit vectors,

    u_i = normalize(W_t h_eos(caption_i))      the text encoder's state at the end token, projected
    v_j = normalize(g(z_j))                    an image encoder g on the image's VAE latent z_j

and the symmetric InfoNCE loss of CLIP (its Figure 3) pulls matching pairs together and pushes the
N - 1 other pairs of the batch apart:

    logits_ij = exp(s) u_i . v_j,      L = (CE(logits, diag) + CE(logits^T, diag)) / 2

with a learned temperature s (initialised at log(1 / 0.07), clipped at log 100 as in CLIP). The image
encoder reads the VAE's latents instead of pixels (they hold the image, and encoding is done once for
the whole training set); it is thrown away afterwards. Only the text encoder ships.

Captions that leave attributes out describe several images of a batch; those pairs count as
negatives, as in CLIP's web data, where the same caption fits many images.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from ldm.clip_text import CLIPTextModel

LOGIT_SCALE_INIT = math.log(1 / 0.07)  # CLIP's initial temperature
LOGIT_SCALE_MAX = math.log(100.0)  # CLIP clips exp(s) at 100


class LatentImageEncoder(nn.Module):
    """(B, 4, S, S) latents -> (B, D): three 3x3 convolutions (the last two of stride 2), then a
    linear map of the flattened (S/4 x S/4) feature map, so where things are is kept."""

    def __init__(self, latent_channels: int, side: int, width: int, dim: int) -> None:
        super().__init__()
        self.convs = nn.Sequential(
            nn.Conv2d(latent_channels, width, 3, padding=1), nn.SiLU(),
            nn.Conv2d(width, width, 3, stride=2, padding=1), nn.GroupNorm(8, width), nn.SiLU(),
            nn.Conv2d(width, width, 3, stride=2, padding=1), nn.GroupNorm(8, width), nn.SiLU(),
        )
        self.proj = nn.Linear(width * (side // 4) ** 2, dim)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.proj(self.convs(z).flatten(1))  # (B, C, S/4, S/4) -> (B, D)


class ContrastivePair(nn.Module):
    """The text encoder, its projection W_t, the image encoder and the temperature s."""

    def __init__(self, text_encoder: CLIPTextModel, latent_channels: int, side: int, dim: int = 64) -> None:
        super().__init__()
        self.text_encoder = text_encoder
        self.text_projection = nn.Linear(text_encoder.config.hidden_size, dim, bias=False)
        self.image_encoder = LatentImageEncoder(latent_channels, side, 64, dim)
        self.logit_scale = nn.Parameter(torch.tensor(LOGIT_SCALE_INIT))

    def forward(self, ids: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        """The (N, N) logits exp(s) u_i . v_j of N captions against N images."""
        u = F.normalize(self.text_projection(self.text_encoder(ids).pooled), dim=-1)  # (N, D)
        v = F.normalize(self.image_encoder(latents), dim=-1)  # (N, D)
        return self.logit_scale.clamp(max=LOGIT_SCALE_MAX).exp() * u @ v.T  # (N, N)


def clip_loss(logits: torch.Tensor) -> torch.Tensor:
    """CLIP's symmetric cross entropy: pair i is the right answer for row i and for column i."""
    if logits.ndim != 2 or logits.shape[0] != logits.shape[1]:
        raise ValueError(f"logits must be a square (N, N) matrix, got {tuple(logits.shape)}")
    target = torch.arange(logits.shape[0], device=logits.device)
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2


def retrieval_accuracy(logits: torch.Tensor) -> float:
    """The share of captions whose own image scores highest (top-1, text -> image)."""
    return float((logits.argmax(dim=1) == torch.arange(logits.shape[0], device=logits.device)).float().mean())


def train_clip(pair: ContrastivePair, latents: torch.Tensor, captions: Callable[[Sequence[int], np.random.Generator], list[str]],
               tokenizer, steps: int, batch_size: int, lr: float, device: str, log: Callable[[str], None],
               seed: int = 0) -> list[tuple[int, float, float]]:
    """AdamW on ``clip_loss`` for ``steps`` steps of ``batch_size`` latents drawn from ``latents``
    (N, 4, S, S), captioned by ``captions(indices, rng)``; returns (step, loss, top-1 accuracy) rows
    every 50 steps. Deterministic in ``seed``."""
    from .train import learning_rate  # the trainer's warm-up + cosine schedule

    opt = torch.optim.AdamW(pair.parameters(), lr=lr, weight_decay=0.0)
    history = []
    bar = tqdm(range(steps), desc="clip")
    for step in bar:
        for group in opt.param_groups:
            group["lr"] = learning_rate(step, steps, lr)
        rng = np.random.default_rng([seed, 7, step])
        idx = rng.choice(latents.shape[0], size=batch_size, replace=False)
        ids = tokenizer(captions(idx.tolist(), rng)).to(device)
        logits = pair(ids, latents[idx].to(device))
        loss = clip_loss(logits)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(pair.parameters(), 1.0)
        opt.step()
        if (step + 1) % 50 == 0 or step + 1 == steps:
            acc = retrieval_accuracy(logits.detach())
            history.append((step + 1, loss.item(), acc))
            bar.set_postfix(loss=f"{loss.item():.3f}", top1=f"{acc:.2f}")
            if (step + 1) % 500 == 0 or step + 1 == steps:
                log(f"clip step {step + 1}/{steps}: loss {loss.item():.4f}, in-batch top-1 {acc:.3f}, "
                    f"temperature 1/{pair.logit_scale.exp().item():.1f}")
    return history


def save_text_encoder_state(text_encoder: CLIPTextModel, path: Path) -> None:
    from weights.io import write_safetensors

    write_safetensors({k: v.detach().cpu().contiguous() for k, v in text_encoder.state_dict().items()}, path)
