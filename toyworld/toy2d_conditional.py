"""Class-conditional 2-D diffusion for the guidance chapter: labelled clusters, a conditional
denoiser with a "null" class, and a classifier of noisy points.

The data are K overlapping isotropic Gaussians, p(x_0 | y) = N(m_y, std^2 I), p(y) = 1/K. Their
noised versions stay Gaussian (Ho et al. 2020, Eq. 4):

    p_t(x_t | y) = N(sqrt(alpha_bar_t) m_y, (alpha_bar_t std^2 + 1 - alpha_bar_t) I)

so the true posterior p_t(y | x_t) and the true eps of every class are known in closed form:
the notebook measures fidelity with the exact Bayes classifier of the clean data.

The networks follow Ho & Salimans 2022 (Algorithm 1): one denoiser eps_theta(x_t, t, y) with a
learned class embedding that has one extra row, the null class, and the label replaced by it
with probability ``p_uncond`` during training; and, for classifier guidance (Dhariwal & Nichol
2021, section 4), a classifier p_phi(y | x_t, t) trained with cross-entropy on noised points.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from ddpm.forward import q_sample
from ddpm.schedule import NoiseSchedule
from ddpm.training import train
from unet.embeddings import timestep_embedding

from .toy2d import TinyDenoiser


@dataclass(frozen=True)
class GaussianClusters:
    """K equally likely classes, class y ~ N(means[y], std^2 I) in 2-D."""

    means: torch.Tensor  # (K, 2) float64
    std: float

    @classmethod
    def triangle(cls, radius: float = 1.0, std: float = 0.6) -> "GaussianClusters":
        """Three clusters on a circle at 90, 210 and 330 degrees; they overlap for std >~ radius / 3."""
        angles = torch.tensor([90.0, 210.0, 330.0], dtype=torch.float64) * math.pi / 180
        return cls(radius * torch.stack([angles.cos(), angles.sin()], dim=1), std)  # (3, 2)

    @property
    def num_classes(self) -> int:
        return self.means.shape[0]

    def sample(self, n: int, generator: torch.Generator | None = None, y: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` points and their labels, (n, 2) float32 and (n,) int64; labels drawn uniformly unless given."""
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be a positive int, got {n!r}")
        if y is None:
            y = torch.randint(0, self.num_classes, (n,), generator=generator)
        self._check_labels(y, n)
        noise = torch.randn(n, 2, generator=generator, dtype=torch.float64)
        return (self.means[y] + self.std * noise).float(), y  # (n, 2), (n,)

    def log_joint(self, x_t: torch.Tensor, alpha_bar: float = 1.0) -> torch.Tensor:
        """log p_t(x_t, y) for every class, (n, K): the noised class-conditionals above, times p(y) = 1/K."""
        x = x_t.double()[:, None, :]  # (n, 1, 2)
        mean = math.sqrt(alpha_bar) * self.means[None]  # (1, K, 2)
        var = alpha_bar * self.std**2 + 1 - alpha_bar
        sq = ((x - mean) ** 2).sum(-1)  # (n, K)
        return -sq / (2 * var) - math.log(2 * math.pi * var) - math.log(self.num_classes)

    def posterior(self, x_t: torch.Tensor, alpha_bar: float = 1.0) -> torch.Tensor:
        """The exact p_t(y | x_t), (n, K); ``alpha_bar = 1`` is the Bayes classifier of clean points."""
        return torch.softmax(self.log_joint(x_t, alpha_bar), dim=1)

    def _check_labels(self, y: torch.Tensor, n: int) -> None:
        if y.shape != (n,) or y.is_floating_point() or int(y.min()) < 0 or int(y.max()) >= self.num_classes:
            raise ValueError(f"y must hold {n} class indices in [0, {self.num_classes - 1}], got shape "
                             f"{tuple(y.shape)}, dtype {y.dtype}")


class ConditionalDenoiser(nn.Module):
    """eps_theta(x_t, t, y): x_t, the timestep embedding and a learned class embedding, concatenated, then an MLP.

    The embedding has ``num_classes + 1`` rows; the last, index ``num_classes``, is the null class.
    """

    def __init__(self, num_classes: int, hidden: int = 128, time_dim: int = 32, class_dim: int = 16, depth: int = 4) -> None:
        super().__init__()
        self.num_classes, self.time_dim = num_classes, time_dim
        self.class_embedding = nn.Embedding(num_classes + 1, class_dim)
        layers: list[nn.Module] = [nn.Linear(2 + time_dim + class_dim, hidden), nn.SiLU()]
        for _ in range(depth - 1):
            layers += [nn.Linear(hidden, hidden), nn.SiLU()]
        layers.append(nn.Linear(hidden, 2))
        self.net = nn.Sequential(*layers)

    @property
    def null_label(self) -> int:
        return self.num_classes

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if y.shape != (x_t.shape[0],) or y.is_floating_point() or int(y.min()) < 0 or int(y.max()) > self.num_classes:
            raise ValueError(f"y must hold {x_t.shape[0]} labels in [0, {self.num_classes}] "
                             f"({self.num_classes} = null), got shape {tuple(y.shape)}, dtype {y.dtype}")
        t_emb = timestep_embedding(t, self.time_dim, max_period=1000.0)  # (B, time_dim)
        y_emb = self.class_embedding(y)  # (B, class_dim)
        return self.net(torch.cat([x_t, t_emb, y_emb], dim=1))  # (B, 2)


class NoisyClassifier(nn.Module):
    """log p_phi(y | x_t) up to a constant: logits (B, K) from x_t and the timestep embedding."""

    def __init__(self, num_classes: int, hidden: int = 64, time_dim: int = 32, depth: int = 3) -> None:
        super().__init__()
        self.time_dim = time_dim
        layers: list[nn.Module] = [nn.Linear(2 + time_dim, hidden), nn.SiLU()]
        for _ in range(depth - 1):
            layers += [nn.Linear(hidden, hidden), nn.SiLU()]
        layers.append(nn.Linear(hidden, num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        t = t.expand(x_t.shape[0]) if t.ndim == 0 else t  # (B,)
        emb = timestep_embedding(t, self.time_dim, max_period=1000.0)  # (B, time_dim)
        return self.net(torch.cat([x_t, emb], dim=1))  # (B, K)


def labelled_batches(data: GaussianClusters, batch_size: int, p_uncond: float, null_label: int,
                     generator: torch.Generator | None = None):
    """Endless (x_0, {"y": y}) batches for ``ddpm.train``; each label becomes ``null_label`` with
    probability ``p_uncond`` (Ho & Salimans Algorithm 1, line 3: c <- null with probability p_uncond)."""
    if not 0 <= p_uncond <= 1:
        raise ValueError(f"p_uncond must lie in [0, 1], got {p_uncond!r}")
    while True:
        x0, y = data.sample(batch_size, generator)  # (batch_size, 2), (batch_size,)
        drop = torch.rand(batch_size, generator=generator) < p_uncond  # (batch_size,)
        yield x0, {"y": torch.where(drop, torch.full_like(y, null_label), y)}


def _fit(model: nn.Module, batches, schedule: NoiseSchedule, steps: int, generator: torch.Generator, progress: bool) -> list[float]:
    """The notebooks' recipe: 3/4 of the steps at lr 3e-3, the last 1/4 at 3e-4 (as ``train_2d``)."""
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive int, got {steps!r}")
    decay = steps // 4
    losses = train(model, batches, schedule, steps - decay, lr=3e-3, generator=generator, progress=progress)
    if decay:
        losses += train(model, batches, schedule, decay, lr=3e-4, generator=generator, progress=progress)
    return losses


def train_conditional(data: GaussianClusters, schedule: NoiseSchedule, steps: int = 1200, p_uncond: float = 0.15,
                      seed: int = 0, progress: bool = True) -> tuple[ConditionalDenoiser, list[float]]:
    """A ``ConditionalDenoiser`` trained with label dropout ``p_uncond``, batches of 1024 fresh points."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    model = ConditionalDenoiser(data.num_classes)
    batches = labelled_batches(data, 1024, p_uncond, model.null_label, generator)
    return model, _fit(model, batches, schedule, steps, generator, progress)


def train_unconditional(data: GaussianClusters, schedule: NoiseSchedule, steps: int = 1200, seed: int = 0,
                        progress: bool = True) -> tuple[TinyDenoiser, list[float]]:
    """A plain ``TinyDenoiser`` on the unlabelled clusters: the base model of classifier guidance."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    model = TinyDenoiser(hidden=128, depth=4)

    def batches():
        while True:
            yield data.sample(1024, generator)[0]  # (1024, 2), labels dropped

    return model, _fit(model, batches(), schedule, steps, generator, progress)


def train_classifier(data: GaussianClusters, schedule: NoiseSchedule, steps: int = 600, lr: float = 3e-3,
                     seed: int = 0, progress: bool = True) -> tuple[NoisyClassifier, list[float]]:
    """A ``NoisyClassifier`` trained with cross-entropy on x_t = q_sample(x_0, t, eps), t uniform
    over all timesteps (Dhariwal & Nichol section 4: the classifier must work on noisy inputs)."""
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive int, got {steps!r}")
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    classifier = NoisyClassifier(data.num_classes)
    optimizer = torch.optim.AdamW(classifier.parameters(), lr=lr)
    losses: list[float] = []
    for _ in tqdm(range(steps), desc="classifier", disable=not progress):
        x0, y = data.sample(1024, generator)  # (1024, 2), (1024,)
        t = torch.randint(0, schedule.num_train_timesteps, (1024,), generator=generator)  # (1024,)
        x_t = q_sample(schedule, x0, t, torch.randn(x0.shape, generator=generator))  # Eq. 4, (1024, 2)
        loss = F.cross_entropy(classifier(x_t, t), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    classifier.eval()
    return classifier, losses
