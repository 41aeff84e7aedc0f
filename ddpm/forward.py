"""The forward (noising) process and its posterior (Ho et al. 2020, section 2).

    q(x_t | x_{t-1})   = N(sqrt(1 - beta_t) x_{t-1}, beta_t I)                        Eq. 2
    q(x_t | x_0)       = N(sqrt(alpha_bar_t) x_0, (1 - alpha_bar_t) I)                Eq. 4
    q(x_{t-1} | x_t, x_0) = N(mu_tilde_t(x_t, x_0), beta_tilde_t I)                   Eq. 6
    mu_tilde_t   = sqrt(alpha_bar_{t-1}) beta_t / (1 - alpha_bar_t) x_0
                 + sqrt(alpha_t) (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t) x_t        Eq. 7
    beta_tilde_t = (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t) beta_t                   Eq. 7

Code timestep ``t`` indexes ``schedule.betas[t]``; ``alpha_bar_{t-1}`` at ``t = 0`` is 1.

The posterior is written for any pair of timesteps ``t_prev < t`` (a "respaced" schedule, as
samplers with fewer steps use): the effective ``beta`` of the jump is
``1 - alpha_bar_t / alpha_bar_{t_prev}``, which is exactly ``beta_t`` when ``t_prev = t - 1``.
"""
from __future__ import annotations

import torch

from .checks import check_batch_timesteps, check_like, check_timesteps
from .schedule import NoiseSchedule


def broadcast_to_batch(values: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Cast per-timestep coefficients to ``x``'s dtype and shape them to broadcast over ``x``.

    ``values`` is a scalar (one t for the whole batch) or has one entry per batch item; the
    result has shape ``(B, 1, ..., 1)`` in the second case.
    """
    values = values.to(device=x.device, dtype=x.dtype)
    if values.ndim == 0:
        return values
    return values.reshape(-1, *([1] * (x.ndim - 1)))


def _timesteps(schedule: NoiseSchedule, t: torch.Tensor | int, x: torch.Tensor, name: str = "t") -> torch.Tensor:
    t = check_timesteps(t, schedule.num_train_timesteps, name)
    check_batch_timesteps(t, x)
    return t


def q_sample(schedule: NoiseSchedule, x0: torch.Tensor, t: torch.Tensor | int, noise: torch.Tensor) -> torch.Tensor:
    """Sample q(x_t | x_0) in closed form (Eq. 4): x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps."""
    check_like(x0, "x0", noise=noise)
    t = _timesteps(schedule, t, x0)
    alpha_bar = schedule.alpha_bar[t]
    return broadcast_to_batch(alpha_bar.sqrt(), x0) * x0 + broadcast_to_batch((1 - alpha_bar).sqrt(), x0) * noise


def q_step(schedule: NoiseSchedule, x_prev: torch.Tensor, t: torch.Tensor | int, noise: torch.Tensor) -> torch.Tensor:
    """One forward step q(x_t | x_{t-1}) (Eq. 2): x_t = sqrt(1 - beta_t) x_{t-1} + sqrt(beta_t) eps."""
    check_like(x_prev, "x_prev", noise=noise)
    t = _timesteps(schedule, t, x_prev)
    beta = schedule.betas[t]
    return broadcast_to_batch((1 - beta).sqrt(), x_prev) * x_prev + broadcast_to_batch(beta.sqrt(), x_prev) * noise


def posterior_coefficients(
    schedule: NoiseSchedule, t: torch.Tensor, t_prev: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The three numbers of Eq. 7 for the jump t -> t_prev: (coef of x_0, coef of x_t, beta_tilde).

    With ``beta = 1 - alpha_bar_t / alpha_bar_prev`` (``= beta_t`` for ``t_prev = t - 1``):
        coef_x0    = sqrt(alpha_bar_prev) beta / (1 - alpha_bar_t)
        coef_xt    = sqrt(1 - beta) (1 - alpha_bar_prev) / (1 - alpha_bar_t)
        beta_tilde = (1 - alpha_bar_prev) / (1 - alpha_bar_t) beta
    ``t_prev = -1`` stands for the clean end (alpha_bar_prev = 1). All float64.
    """
    t = torch.as_tensor(t, dtype=torch.long)
    t_prev = torch.as_tensor(t_prev, dtype=torch.long)
    if t.shape != t_prev.shape or bool((t_prev >= t).any()):
        raise ValueError(f"t_prev must be earlier than t with the same shape, got t={t.tolist()} t_prev={t_prev.tolist()}")
    alpha_bar = schedule.alpha_bar[t]
    alpha_bar_prev = schedule.alpha_bar_at(t_prev, final_alpha_bar=1.0)
    beta = 1 - alpha_bar / alpha_bar_prev
    coef_x0 = alpha_bar_prev.sqrt() * beta / (1 - alpha_bar)
    coef_xt = (1 - beta).sqrt() * (1 - alpha_bar_prev) / (1 - alpha_bar)
    beta_tilde = (1 - alpha_bar_prev) / (1 - alpha_bar) * beta
    return coef_x0, coef_xt, beta_tilde


def q_posterior(
    schedule: NoiseSchedule,
    x0: torch.Tensor,
    x_t: torch.Tensor,
    t: torch.Tensor | int,
    t_prev: torch.Tensor | int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and variance of q(x_{t_prev} | x_t, x_0) (Eqs. 6-7); ``t_prev`` defaults to ``t - 1``.

    Returns ``(mu_tilde, beta_tilde)``, the variance shaped to broadcast over ``x_t``.
    """
    check_like(x_t, "x_t", x0=x0)
    t = _timesteps(schedule, t, x_t)
    t_prev = t - 1 if t_prev is None else torch.as_tensor(t_prev, dtype=torch.long)
    coef_x0, coef_xt, beta_tilde = posterior_coefficients(schedule, t, t_prev)
    mean = broadcast_to_batch(coef_x0, x_t) * x0 + broadcast_to_batch(coef_xt, x_t) * x_t
    return mean, broadcast_to_batch(beta_tilde, x_t)
