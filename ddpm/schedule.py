"""Noise schedules: beta_t, alpha_t, alpha_bar_t and the signal-to-noise ratio.

Notation (Ho et al. 2020, "Denoising Diffusion Probabilistic Models", section 2):

    alpha_t     = 1 - beta_t
    alpha_bar_t = prod_{s <= t} alpha_s                       (defined just below Eq. 4)
    SNR(t)      = alpha_bar_t / (1 - alpha_bar_t)             (Kingma et al. 2021, Eq. 2)

Indexing: code timesteps run ``t = 0 .. T-1`` as in Stable Diffusion and diffusers; code ``t``
is the paper's ``t + 1``. The clean image "before step 0" has ``alpha_bar = 1``.

Everything is computed in float64, as the original latent-diffusion code does before it
stores ``alphas_cumprod`` in a checkpoint; the samplers cast the coefficients they gather to
the dtype of the image.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import torch

from .checks import check_choice

SCHEDULES = ("linear", "scaled_linear", "cosine")
SPACINGS = ("leading", "trailing", "linspace")


def linear_betas(num_train_timesteps: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> torch.Tensor:
    """DDPM's schedule: beta_t rises linearly from 1e-4 to 0.02 over T = 1000 steps (section 4)."""
    return torch.linspace(beta_start, beta_end, num_train_timesteps, dtype=torch.float64)


def scaled_linear_betas(
    num_train_timesteps: int, beta_start: float = 0.00085, beta_end: float = 0.012
) -> torch.Tensor:
    """Stable Diffusion's schedule: sqrt(beta_t) is linear, beta_t = linspace(sqrt(b0), sqrt(b1))^2.

    This is the ``linear`` schedule of the latent-diffusion code (``make_beta_schedule``) with
    SD v1's ``linear_start=0.00085, linear_end=0.012``.
    """
    return torch.linspace(beta_start**0.5, beta_end**0.5, num_train_timesteps, dtype=torch.float64) ** 2


def cosine_betas(num_train_timesteps: int, s: float = 0.008, max_beta: float = 0.999) -> torch.Tensor:
    """Nichol & Dhariwal 2021, Eq. 17: alpha_bar(t) = f(t) / f(0), f(t) = cos^2(((t/T + s)/(1 + s)) pi/2).

    The betas follow as beta_t = 1 - alpha_bar(t+1) / alpha_bar(t), clipped at ``max_beta``
    (0.999) to avoid the singularity at t = T, as the paper does.
    """
    T = num_train_timesteps
    steps = torch.arange(T + 1, dtype=torch.float64) / T
    f = torch.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
    alpha_bar = f / f[0]
    return (1 - alpha_bar[1:] / alpha_bar[:-1]).clamp(max=max_beta)


@dataclass(frozen=True)
class NoiseSchedule:
    """The variance schedule of a diffusion model and the quantities derived from it.

    Build one with :meth:`from_name`; ``NoiseSchedule.from_name("scaled_linear")`` is SD v1's.
    """

    betas: torch.Tensor  # (T,) float64

    def __post_init__(self) -> None:
        b = self.betas
        if b.ndim != 1 or b.numel() < 1:
            raise ValueError(f"betas must be a non-empty 1-D tensor, got shape {tuple(b.shape)}")
        if not bool(((b > 0) & (b < 1)).all()):
            raise ValueError(f"betas must lie in (0, 1), got values in [{float(b.min())}, {float(b.max())}]")

    @classmethod
    def from_name(cls, name: str, num_train_timesteps: int = 1000, **kwargs: float) -> "NoiseSchedule":
        """``name`` is one of ``linear``, ``scaled_linear`` (SD v1) or ``cosine``; kwargs go to the maker."""
        check_choice("schedule", name, SCHEDULES)
        if not isinstance(num_train_timesteps, int) or num_train_timesteps < 1:
            raise ValueError(f"num_train_timesteps must be a positive int, got {num_train_timesteps!r}")
        maker = {"linear": linear_betas, "scaled_linear": scaled_linear_betas, "cosine": cosine_betas}[name]
        return cls(maker(num_train_timesteps, **kwargs))

    @property
    def num_train_timesteps(self) -> int:
        return self.betas.numel()

    @cached_property
    def alphas(self) -> torch.Tensor:
        """alpha_t = 1 - beta_t."""
        return 1.0 - self.betas

    @cached_property
    def alpha_bar(self) -> torch.Tensor:
        """alpha_bar_t = prod_{s<=t} alpha_s; SD checkpoints store it as ``alphas_cumprod``."""
        return torch.cumprod(self.alphas, dim=0)

    @cached_property
    def snr(self) -> torch.Tensor:
        """SNR(t) = alpha_bar_t / (1 - alpha_bar_t): signal power over noise power in x_t."""
        ab = self.alpha_bar
        return ab / (1.0 - ab)

    def alpha_bar_at(self, t: torch.Tensor, final_alpha_bar: float = 1.0) -> torch.Tensor:
        """alpha_bar at integer timesteps ``t``; entries ``t < 0`` (the clean end) give ``final_alpha_bar``.

        The reverse process and DDIM both step to "t = -1" at the end; DDPM uses
        alpha_bar = 1 there. SD's DDIM uses ``alphas_cumprod[0]`` (``set_alpha_to_one=False``).
        """
        t = torch.as_tensor(t, dtype=torch.long)
        ab = self.alpha_bar
        if t.numel() and int(t.max()) >= ab.numel():
            raise ValueError(f"timestep {int(t.max())} out of range, expected at most {ab.numel() - 1}")
        return torch.where(t >= 0, ab[t.clamp(min=0)], torch.tensor(final_alpha_bar, dtype=ab.dtype))


def make_timesteps(
    num_inference_steps: int,
    num_train_timesteps: int = 1000,
    spacing: str = "leading",
    steps_offset: int = 0,
) -> torch.Tensor:
    """The descending sub-sequence tau of training timesteps a sampler visits (DDIM, section 4.2).

    - ``leading``: 0, k, 2k, ... with k = T // n, plus ``steps_offset``. SD v1 uses this with
      offset 1, giving 981, 961, ..., 1 for 50 steps.
    - ``trailing``: counts down from T - 1 in steps of T / n (rounded): 999, 979, ..., 19.
    - ``linspace``: n points evenly spread over [0, T - 1], rounded.

    ``steps_offset`` shifts the ``leading`` spacing only, as in diffusers: the other two are
    pinned to T - 1 and to [0, T - 1] by construction, so an SD config's offset of 1 leaves them be.

    These are the three ``timestep_spacing`` rules of Lin et al. 2024 (Table 2), as diffusers
    implements them.
    """
    check_choice("timestep spacing", spacing, SPACINGS)
    n, T = num_inference_steps, num_train_timesteps
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:  # True is an int in Python, not a step count
        raise ValueError(f"num_inference_steps must be a positive int, got {n!r}")
    if n > T:
        raise ValueError(f"num_inference_steps={n} is more than num_train_timesteps={T}; expected at most {T}")
    if spacing == "leading":
        ts = np.arange(0, n) * (T // n) + steps_offset
    elif spacing == "trailing":
        ts = np.round(np.arange(T, 0, -T / n)).astype(np.int64) - 1
    else:
        ts = np.linspace(0, T - 1, n).round().astype(np.int64)
    ts = np.sort(ts)[::-1].copy()
    if ts.min() < 0 or ts.max() >= T:
        raise ValueError(
            f"spacing={spacing!r} with steps_offset={steps_offset} and {n} steps gives timesteps in "
            f"[{ts.min()}, {ts.max()}], expected them inside [0, {T - 1}]"
        )
    return torch.from_numpy(ts).long()


def previous_timesteps(timesteps: torch.Tensor) -> torch.Tensor:
    """For each entry of a descending sequence, the next one visited; -1 after the last.

    -1 means "the clean end": see :meth:`NoiseSchedule.alpha_bar_at`.
    """
    return torch.cat([timesteps[1:], timesteps.new_tensor([-1])])


def timestep_pairs(timesteps: torch.Tensor) -> list[tuple[int, int]]:
    """The jump (t, t_prev) of each step down a descending sequence of timesteps, t_prev = -1 after
    the last. Every sampling loop walks these; an inversion walks them in reverse."""
    return list(zip(timesteps.tolist(), previous_timesteps(timesteps).tolist()))

