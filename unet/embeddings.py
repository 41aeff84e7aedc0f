"""Sinusoidal timestep embedding.

The timestep t is given to the network as the Transformer's positional encoding of t
(Vaswani et al. 2017, section 3.5; used by DDPM, appendix B):

    freq_i = max_period^(-i / half),  i = 0 .. half - 1,   half = dim / 2
    emb(t) = [cos(t freq_0), ..., cos(t freq_{half-1}), sin(t freq_0), ..., sin(t freq_{half-1})]

Cosines first, as Stable Diffusion's checkpoints expect (diffusers: ``flip_sin_to_cos=True``,
``downscale_freq_shift=0``).
"""
from __future__ import annotations

import math

import torch


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Embed integer or real timesteps ``t`` of shape (B,) as (B, dim) sinusoids."""
    if dim % 2:
        raise ValueError(f"timestep embedding dim must be even, got {dim}")
    t = torch.as_tensor(t)
    if t.ndim == 0:
        t = t[None]
    if t.ndim != 1:
        raise ValueError(f"t must be a scalar or of shape (B,), got shape {tuple(t.shape)}")
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None, :]  # (B, half)
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)  # (B, dim)
