"""DDIM inversion: run the deterministic sampler backwards, from an image to its noise.

With eta = 0, Eq. 12 of Song et al. 2021 is an Euler step of an ODE (section 4.3, Eq. 13-14):

    x_t' / sqrt(alpha_bar_t') = x_t / sqrt(alpha_bar_t)
        + (sqrt((1 - alpha_bar_t') / alpha_bar_t') - sqrt((1 - alpha_bar_t) / alpha_bar_t)) eps(x_t, t)

Integrated the other way (t' > t) it *encodes* an image into the latent x_T that DDIM would decode
back to it. One inversion step from t_prev up to t reuses the step formula with the two noise
levels swapped, and evaluates the model at the destination t with the current x_{t_prev}:

    x_0_hat = (x_{t_prev} - sqrt(1 - alpha_bar_{t_prev}) eps) / sqrt(alpha_bar_{t_prev}),  eps = eps_theta(x_{t_prev}, t)
    x_t     = sqrt(alpha_bar_t) x_0_hat + sqrt(1 - alpha_bar_t) eps

This assumes eps_theta(x_t, t) ~ eps_theta(x_{t_prev}, t), which is why the reconstruction is
only approximate and improves as the steps get smaller (tested). It is the inversion used by
Prompt-to-Prompt's null-text inversion and by Plug-and-Play.
"""
from __future__ import annotations

import torch
from tqdm import tqdm

from ddpm.checks import check_choice, check_timesteps
from ddpm.forward import gather
from ddpm.parameterization import PREDICTION_TYPES, predict_x0_and_eps
from ddpm.reverse import Model, StepOutput
from ddpm.schedule import NoiseSchedule, make_timesteps, timestep_pairs

from .sampler import resolve_final_alpha_bar


def ddim_invert_step(
    schedule: NoiseSchedule,
    model_output: torch.Tensor,
    x_prev: torch.Tensor,
    t_prev: int,
    t: int,
    *,
    prediction_type: str = "epsilon",
    final_alpha_bar: float | None = None,
) -> StepOutput:
    """One inversion step x_{t_prev} -> x_t, with ``model_output = model(x_prev, t)``.

    ``t_prev = -1`` is the clean end, at alpha_bar = ``final_alpha_bar`` (SD: alpha_bar[0]).
    Returns the new latent and the step's estimate of x_0.
    """
    t_tensor = check_timesteps(t, schedule.num_train_timesteps)
    if not -1 <= int(t_prev) < int(t):
        raise ValueError(f"inversion goes up in t: expected -1 <= t_prev < t, got t_prev={int(t_prev)} t={int(t)}")
    # The output is read as eps at t; for eps-prediction it is used as it is.
    _, eps = predict_x0_and_eps(schedule, model_output, x_prev, t_tensor, prediction_type)
    alpha_bar_prev = schedule.alpha_bar_at(torch.tensor(int(t_prev)), resolve_final_alpha_bar(schedule, final_alpha_bar))
    alpha_bar = schedule.alpha_bar[t_tensor]
    pred_x0 = (x_prev - gather((1 - alpha_bar_prev).sqrt(), x_prev) * eps) / gather(alpha_bar_prev.sqrt(), x_prev)
    x_t = gather(alpha_bar.sqrt(), x_prev) * pred_x0 + gather((1 - alpha_bar).sqrt(), x_prev) * eps
    return StepOutput(x_t, pred_x0)


@torch.no_grad()
def ddim_invert(
    model: Model,
    x0: torch.Tensor,
    schedule: NoiseSchedule,
    num_inference_steps: int = 50,
    *,
    spacing: str = "leading",
    steps_offset: int = 1,
    prediction_type: str = "epsilon",
    final_alpha_bar: float | None = None,
    progress: bool = True,
) -> list[torch.Tensor]:
    """Invert ``x0`` through the same timesteps ``ddim_sample`` would visit, in reverse.

    Returns every latent, from the start up: ``[x0, x_{t_1}, ..., x_{t_N}]`` with t_1 the
    smallest visited timestep, so ``latents[-1]`` is the x_T to hand to ``ddim_sample`` and
    ``latents[-1 - i]`` is the latent that sampling should meet after i steps.
    """
    check_choice("prediction_type", prediction_type, PREDICTION_TYPES)
    if not isinstance(x0, torch.Tensor) or not x0.is_floating_point():
        raise ValueError(f"x0 must be a floating-point tensor, got {type(x0).__name__}")
    timesteps = make_timesteps(num_inference_steps, schedule.num_train_timesteps, spacing, steps_offset)
    ascending = timestep_pairs(timesteps)[::-1]  # (t, t_prev) of each sampling step, the last first
    latents = [x0]
    x = x0
    for t, t_prev in tqdm(ascending, desc="DDIM inversion", disable=not progress):
        out = model(x, torch.full((x.shape[0],), t, dtype=torch.long, device=x.device))
        x = ddim_invert_step(schedule, out, x, t_prev, t, prediction_type=prediction_type,
                             final_alpha_bar=final_alpha_bar).sample
        latents.append(x)
    return latents
