"""What the network predicts: noise eps, the clean image x_0, or the velocity v.

All three determine each other given x_t, because x_t = sqrt(alpha_bar) x_0 + sqrt(1 - alpha_bar) eps
(Ho et al. 2020, Eq. 4). Writing a = sqrt(alpha_bar_t), s = sqrt(1 - alpha_bar_t), so a^2 + s^2 = 1:

    x_0 = (x_t - s eps) / a          Ho et al. Eq. 15; Song et al. (DDIM) Eq. 9
    eps = (x_t - a x_0) / s
    v   = a eps - s x_0              Salimans & Ho 2022 ("Progressive distillation"), section 4
    x_0 = a x_t - s v                (substitute x_t and use a^2 + s^2 = 1)
    eps = s x_t + a v

Samplers call :func:`predict_x0_and_eps` once per step and work with both.
"""
from __future__ import annotations

import torch

from .checks import check_choice, check_like, check_timesteps
from .forward import broadcast_to_batch
from .schedule import NoiseSchedule

PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")


def _a_s(schedule: NoiseSchedule, t: torch.Tensor | int, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    t = check_timesteps(t, schedule.num_train_timesteps)
    alpha_bar = schedule.alpha_bar[t]
    return broadcast_to_batch(alpha_bar.sqrt(), x), broadcast_to_batch((1 - alpha_bar).sqrt(), x)


def eps_to_x0(schedule: NoiseSchedule, x_t: torch.Tensor, t: torch.Tensor | int, eps: torch.Tensor) -> torch.Tensor:
    """x_0 = (x_t - sqrt(1 - alpha_bar_t) eps) / sqrt(alpha_bar_t)  (Ho et al. Eq. 15)."""
    a, s = _a_s(schedule, t, x_t)
    return (x_t - s * eps) / a


def x0_to_eps(schedule: NoiseSchedule, x_t: torch.Tensor, t: torch.Tensor | int, x0: torch.Tensor) -> torch.Tensor:
    """eps = (x_t - sqrt(alpha_bar_t) x_0) / sqrt(1 - alpha_bar_t)  (Eq. 4 solved for eps)."""
    a, s = _a_s(schedule, t, x_t)
    return (x_t - a * x0) / s


def v_target(schedule: NoiseSchedule, x0: torch.Tensor, t: torch.Tensor | int, eps: torch.Tensor) -> torch.Tensor:
    """v = sqrt(alpha_bar_t) eps - sqrt(1 - alpha_bar_t) x_0  (Salimans & Ho 2022, section 4)."""
    a, s = _a_s(schedule, t, x0)
    return a * eps - s * x0


def v_to_x0(schedule: NoiseSchedule, x_t: torch.Tensor, t: torch.Tensor | int, v: torch.Tensor) -> torch.Tensor:
    """x_0 = sqrt(alpha_bar_t) x_t - sqrt(1 - alpha_bar_t) v."""
    a, s = _a_s(schedule, t, x_t)
    return a * x_t - s * v


def v_to_eps(schedule: NoiseSchedule, x_t: torch.Tensor, t: torch.Tensor | int, v: torch.Tensor) -> torch.Tensor:
    """eps = sqrt(1 - alpha_bar_t) x_t + sqrt(alpha_bar_t) v."""
    a, s = _a_s(schedule, t, x_t)
    return s * x_t + a * v


def predict_x0_and_eps(
    schedule: NoiseSchedule,
    model_output: torch.Tensor,
    x_t: torch.Tensor,
    t: torch.Tensor | int,
    prediction_type: str = "epsilon",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Turn a network output of any parameterisation into the pair (x_0 estimate, eps estimate)."""
    check_choice("prediction_type", prediction_type, PREDICTION_TYPES)
    check_like(x_t, "x_t", model_output=model_output)
    if prediction_type == "epsilon":
        return eps_to_x0(schedule, x_t, t, model_output), model_output
    if prediction_type == "sample":
        return model_output, x0_to_eps(schedule, x_t, t, model_output)
    return v_to_x0(schedule, x_t, t, model_output), v_to_eps(schedule, x_t, t, model_output)


def training_target(
    schedule: NoiseSchedule, x0: torch.Tensor, t: torch.Tensor | int, eps: torch.Tensor, prediction_type: str
) -> torch.Tensor:
    """What the network is trained to output for a given (x_0, t, eps)."""
    check_choice("prediction_type", prediction_type, PREDICTION_TYPES)
    if prediction_type == "epsilon":
        return eps
    if prediction_type == "sample":
        return x0
    return v_target(schedule, x0, t, eps)
