"""A diffusion model small enough to train in seconds: 2-D point clouds and an MLP denoiser.

The first notebook trains it to show the forward and reverse processes on data one can plot.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from unet.embeddings import timestep_embedding

from .checks import check_choice

DATASETS = ("moons", "swissroll", "gaussians")


def sample_2d(name: str, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """``n`` points of a named 2-D distribution, scaled to roughly unit variance: (n, 2)."""
    check_choice("2-D dataset", name, DATASETS)
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    u = torch.rand(n, generator=generator)
    jitter = 0.05 * torch.randn(n, 2, generator=generator)
    if name == "moons":
        upper = torch.rand(n, generator=generator) < 0.5
        angle = math.pi * u
        x = torch.where(upper, torch.cos(angle), 1 - torch.cos(angle))
        y = torch.where(upper, torch.sin(angle), 0.5 - torch.sin(angle))
        points = torch.stack([x - 0.5, y - 0.25], dim=1) * 1.6
    elif name == "swissroll":
        r = 1.5 * math.pi * (1 + 2 * u)
        points = torch.stack([r * torch.cos(r), r * torch.sin(r)], dim=1) / 7.0
    else:  # eight Gaussians on a circle
        k = torch.randint(0, 8, (n,), generator=generator).float()
        points = 1.4 * torch.stack([torch.cos(k * math.pi / 4), torch.sin(k * math.pi / 4)], dim=1)
    return points + jitter


class TinyDenoiser(nn.Module):
    """eps_theta(x_t, t) for 2-D data: the timestep embedding is concatenated to x_t, then an MLP."""

    def __init__(self, hidden: int = 128, time_dim: int = 32, depth: int = 3) -> None:
        super().__init__()
        self.time_dim = time_dim
        layers: list[nn.Module] = [nn.Linear(2 + time_dim, hidden), nn.SiLU()]
        for _ in range(depth - 1):
            layers += [nn.Linear(hidden, hidden), nn.SiLU()]
        layers.append(nn.Linear(hidden, 2))
        self.net = nn.Sequential(*layers)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        emb = timestep_embedding(t, self.time_dim, max_period=1000.0)  # (B, time_dim)
        return self.net(torch.cat([x_t, emb], dim=1))  # (B, 2)


def batches_2d(name: str, batch_size: int, generator: torch.Generator | None = None):
    """An endless iterator of fresh (batch_size, 2) batches, for ``ddpm.train``."""
    while True:
        yield sample_2d(name, batch_size, generator)
