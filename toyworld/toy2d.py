"""A diffusion model small enough to train in seconds: 2-D point clouds and an MLP denoiser.

The first notebook trains it to show the forward and reverse processes on data one can plot.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from ddpm.checks import check_choice
from ddpm.schedule import NoiseSchedule
from ddpm.training import train
from unet.embeddings import timestep_embedding

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


def train_2d(
    name: str = "moons", steps: int = 1600, seed: int = 0, progress: bool = True
) -> tuple[TinyDenoiser, NoiseSchedule, list[float]]:
    """The notebooks' and demo's recipe: a 4-layer ``TinyDenoiser`` on batches of 1024 fresh points,
    DDPM's ``linear`` schedule, 3/4 of the steps at lr 3e-3 and the last 1/4 at 3e-4 (a one-step
    decay). About 15 s on one CPU core for 1600 steps. Returns (model, schedule, losses)."""
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive int, got {steps!r}")
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    schedule = NoiseSchedule.from_name("linear")
    model = TinyDenoiser(hidden=128, depth=4)
    batches = batches_2d(name, 1024, generator)
    decay = steps // 4
    losses = train(model, batches, schedule, steps - decay, lr=3e-3, generator=generator, progress=progress)
    if decay:
        losses += train(model, batches, schedule, decay, lr=3e-4, generator=generator, progress=progress)
    return model, schedule, losses


def energy_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """Energy distance between two point clouds (Szekely & Rizzo 2013, Eq. 1):
    2 E|X - Y| - E|X - X'| - E|Y - Y'|, zero if and only if the distributions are equal.

    Estimated from the samples (with a small positive bias of order 1/n)."""
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"expected two (n, d) point clouds of the same d, got {tuple(a.shape)} and {tuple(b.shape)}")

    def mean_dist(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return torch.cdist(x.double(), y.double()).mean()  # mean over the (n, m) distance matrix

    return float(2 * mean_dist(a, b) - mean_dist(a, a) - mean_dist(b, b))
