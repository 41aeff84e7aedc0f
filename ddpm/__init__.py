"""DDPM: schedules, the forward process, its posterior, the reverse process and the training loss.

Follows Ho et al. 2020, "Denoising Diffusion Probabilistic Models"; the cosine schedule is
Nichol & Dhariwal 2021 and the v parameterisation Salimans & Ho 2022.
"""
from .forward import broadcast_to_batch, posterior_coefficients, q_posterior, q_sample, q_step
from .parameterization import (
    PREDICTION_TYPES,
    eps_to_x0,
    predict_x0_and_eps,
    training_target,
    v_target,
    v_to_eps,
    v_to_x0,
    x0_to_eps,
)
from .reverse import VARIANCES, StepOutput, ddpm_sample, ddpm_step, draw_noise, initial_noise, sampling_loop
from .schedule import (
    SCHEDULES,
    SPACINGS,
    NoiseSchedule,
    cosine_betas,
    linear_betas,
    make_timesteps,
    previous_timesteps,
    scaled_linear_betas,
    timestep_pairs,
)
from .training import diffusion_loss, train

__all__ = [
    "NoiseSchedule",
    "PREDICTION_TYPES",
    "SCHEDULES",
    "SPACINGS",
    "StepOutput",
    "VARIANCES",
    "broadcast_to_batch",
    "cosine_betas",
    "ddpm_sample",
    "ddpm_step",
    "diffusion_loss",
    "draw_noise",
    "eps_to_x0",
    "initial_noise",
    "linear_betas",
    "make_timesteps",
    "posterior_coefficients",
    "predict_x0_and_eps",
    "previous_timesteps",
    "q_posterior",
    "q_sample",
    "q_step",
    "sampling_loop",
    "scaled_linear_betas",
    "timestep_pairs",
    "train",
    "training_target",
    "v_target",
    "v_to_eps",
    "v_to_x0",
    "x0_to_eps",
]
