"""Shared test helpers: deterministic fake denoisers and analytic oracles."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # the packages are installed editable; this keeps a bare checkout runnable
    sys.path.insert(0, str(ROOT))

from ddpm import NoiseSchedule  # noqa: E402


@pytest.fixture
def sd_schedule() -> NoiseSchedule:
    """SD v1's schedule: scaled_linear 0.00085..0.012 over 1000 steps."""
    return NoiseSchedule.from_name("scaled_linear")


def fake_model(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """A deterministic, nonlinear stand-in for a network: depends on x and on t, and, like a real
    eps-predictor, stays bounded so that sampled trajectories stay of order one."""
    t = torch.as_tensor(t, dtype=x.dtype).reshape(-1, *([1] * (x.ndim - 1)))
    return 0.8 * torch.tanh(x) + 0.2 * torch.cos(t / 137.0) * torch.tanh(x.roll(1, dims=-1))


def assert_trajectories_close(ours, ref):
    """float32 carries 2^-24 ~ 6e-8 relative precision and each step adds a few roundings (and
    diffusers' float32 alphas_cumprod, within 6e-5 of ours); the errors add up at most linearly over
    the N steps. Bound: 2e-7 * N relative to the trajectory's scale, about 3x the worst case measured
    on these trajectories (1000 steps: 2.8e-5 relative; 50 steps: 3.6e-6)."""
    scale = max(1.0, max(b.abs().max().item() for b in ref))
    bound = 2e-7 * (len(ref) - 1) * scale
    for i, (a, b) in enumerate(zip(ours, ref)):
        err = (a - b).abs().max().item()
        assert err <= bound, f"step {i}: max abs difference {err:.3g} > {bound:.3g}"


def point_oracle(schedule: NoiseSchedule, x0: torch.Tensor):
    """The exact eps-prediction when all data sits at ``x0``: eps = (x_t - sqrt(ab) x0) / sqrt(1 - ab)."""

    def model(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        ab = schedule.alpha_bar[t].to(x_t.dtype).reshape(-1, *([1] * (x_t.ndim - 1)))
        return (x_t - ab.sqrt() * x0) / (1 - ab).sqrt()

    return model


def gaussian_oracle(schedule: NoiseSchedule, mu: float, sigma: float):
    """The exact eps-prediction E[eps | x_t] for data x_0 ~ N(mu, sigma^2 I).

    With x_t = a x_0 + s eps (a = sqrt(ab), s = sqrt(1 - ab)), (x_t, eps) are jointly Gaussian:
    Cov(eps, x_t) = s, Var(x_t) = a^2 sigma^2 + s^2, so E[eps | x_t] = s (x_t - a mu) / (a^2 sigma^2 + s^2).
    """

    def model(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        ab = schedule.alpha_bar[t].to(x_t.dtype).reshape(-1, *([1] * (x_t.ndim - 1)))
        a, s = ab.sqrt(), (1 - ab).sqrt()
        return s * (x_t - a * mu) / (a**2 * sigma**2 + s**2)

    return model
